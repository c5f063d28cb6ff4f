"""`stock-assets provision`, `trigger` and `notifications` against the local stack."""

import json

import boto3
import pytest

from stock_assets.cli import main
from stock_assets.provision import (
    ProvisionConfig,
    grader_csv,
    marker_key,
    provision,
)
from stock_assets.settings import FILTER_KEY, TABLE_NAME, Naming
from stock_assets_tests.conftest import SAMPLE_FILTER


@pytest.fixture
def config(clean_stack, naming) -> ProvisionConfig:
    return ProvisionConfig(
        naming=naming,
        region="eu-west-1",
        emails=["dora@example.com"],
        static_ip="203.0.113.7",
        filter_file=SAMPLE_FILTER,
        database_url=clean_stack.env["STOCK_ASSETS_DATABASE_URL"],
    )


def keys(s3_client, bucket: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def table_exists(db) -> bool:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (TABLE_NAME,))
        return cur.fetchone()[0] is not None


def test_dry_run_prints_the_plan_and_touches_nothing(config, s3_client, db):
    lines: list[str] = []
    provision(config, dry_run=True, echo=lines.append)
    assert all(line.lstrip()[0].isdigit() and "would ensure" in line for line in lines)
    text = "\n".join(lines)
    for expected in [config.naming.source_bucket, config.naming.monitored_bucket,
                     config.naming.sns_topic, "dora@example.com", TABLE_NAME]:  # fmt: skip
        assert expected in text
    assert "PUBLIC" not in text  # only behind the explicit flag
    assert s3_client.list_buckets()["Buckets"] == []
    assert not table_exists(db)


def test_provision_creates_everything_and_is_idempotent(config, s3_client, db):
    sns = boto3.client("sns")
    first = provision(config, echo=lambda _: None)
    source = config.naming.source_bucket
    # The spec's folders, spelled as it spells them (not the code's SOURCE_FOLDERS).
    folders = {"CompanyNames/", "Output/", "Scripts/", "Stocks/"}
    expected = folders | {FILTER_KEY, "Scripts/insert_query.sql"}
    assert expected <= keys(s3_client, source)
    assert keys(s3_client, config.naming.monitored_bucket) == set()
    assert first.topic_arn.endswith(":de-mbd-predict-dora-explorer-SNS")
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=first.topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [
        ("email", "dora@example.com")
    ]
    assert table_exists(db)
    body = s3_client.get_object(Bucket=source, Key=FILTER_KEY)["Body"].read()
    assert body == SAMPLE_FILTER.read_bytes()

    with db.cursor() as cur:  # data in the table must survive a second provision
        cur.execute(f"INSERT INTO {TABLE_NAME} (company_name) VALUES ('kept')")
    second = provision(config, echo=lambda _: None)
    assert second.topic_arn == first.topic_arn
    assert len(sns.list_topics()["Topics"]) == 1
    assert len(sns.list_subscriptions_by_topic(TopicArn=first.topic_arn)["Subscriptions"]) == 1
    assert all("created" not in outcome for _, outcome in second.outcomes[:2])
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {TABLE_NAME}")
        assert cur.fetchone()[0] == 1


def test_public_grader_policy_only_behind_the_flag(config, s3_client):
    provision(config, echo=lambda _: None)
    with pytest.raises(s3_client.exceptions.ClientError):
        s3_client.get_bucket_policy(Bucket=config.naming.source_bucket)
    config.public_grader_policy = True
    provision(config, echo=lambda _: None)
    source = json.loads(s3_client.get_bucket_policy(Bucket=config.naming.source_bucket)["Policy"])
    monitored = json.loads(
        s3_client.get_bucket_policy(Bucket=config.naming.monitored_bucket)["Policy"]
    )
    actions = {a for s in source["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject"}  # graders read the source, never write
    assert "s3:PutObject" in {a for s in monitored["Statement"] for a in s["Action"]}


def test_grader_csv_row():
    naming = Naming(cohort="FTDE2301")
    assert grader_csv(naming, "arn:aws:sns:eu-west-1:1:t", "203.0.113.7").splitlines() == [
        "Name,Surname,Source_bucket,Monitored_bucket,SNS_topic,Static_IP",
        "Dora,Explorer,ftde2301-mbd-predict-dora-explorer-s3-source,"
        "ftde2301-mbd-predict-dora-explorer-monitored-bucket,arn:aws:sns:eu-west-1:1:t,203.0.113.7",
    ]


def test_marker_keys():
    assert marker_key(None) == ".SUCCESS"
    assert marker_key("runs/2026-11-01/") == "runs/2026-11-01/.SUCCESS"
    assert marker_key("/x.SUCCESS") == "x.SUCCESS"
    with pytest.raises(ValueError, match="must end in .SUCCESS"):
        marker_key("data.csv")


def test_cli_provision_trigger_and_notifications(clean_stack, s3_client, naming, capsys):
    assert main(["provision", "--filter-file", str(SAMPLE_FILTER), "--static-ip", "10.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert "Name,Surname,Source_bucket,Monitored_bucket,SNS_topic,Static_IP" in out
    assert "Dora,Explorer,de-mbd-predict-dora-explorer-s3-source," in out
    assert out.rstrip().endswith(":de-mbd-predict-dora-explorer-SNS,10.0.0.1")

    assert main(["trigger", "--key", "demo/"]) == 0
    assert "s3://de-mbd-predict-dora-explorer-monitored-bucket/demo/.SUCCESS" in (
        capsys.readouterr().out
    )
    first = s3_client.head_object(Bucket=naming.monitored_bucket, Key="demo/.SUCCESS")["ETag"]
    assert main(["trigger", "--key", "demo/"]) == 0
    # Each trigger is a distinct object, even within the same second.
    assert (
        s3_client.head_object(Bucket=naming.monitored_bucket, Key="demo/.SUCCESS")["ETag"] != first
    )

    sns = boto3.client("sns")
    [topic] = sns.list_topics()["Topics"]
    sns.publish(TopicArn=topic["TopicArn"], Subject="Dora_Explorer_Pipeline_Success", Message="ok")
    capsys.readouterr()
    assert main(["notifications"]) == 0
    out = capsys.readouterr().out
    assert "subject: Dora_Explorer_Pipeline_Success" in out and "\nok\n" in out
