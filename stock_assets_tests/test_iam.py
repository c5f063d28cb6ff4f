"""Policies: every document comes from `stock_assets.iam`; `provision` applies the grader bucket
policy of choice (read back from moto); `stock-assets iam` prints them; and the least-privilege
documents are not only narrow but sufficient: every AWS call the pipeline, its sensors and
`provision` really make (recorded on the local stack) is allowed by its policy."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from dagster import DagsterInstance, build_sensor_context
from dagster_aws.s3 import S3Resource

from stock_assets import iam
from stock_assets.bucket_layout import FILTER_NAME
from stock_assets.cli import main
from stock_assets.provision import ProvisionConfig, provision
from stock_assets.resources import PipelineSettings, SNSResource
from stock_assets.sensors import success_marker_sensor
from stock_assets.settings import Naming
from stock_assets_tests.conftest import SAMPLE_FILTER, SAMPLE_STOCKS
from stock_assets_tests.faults import ACCESS_DENIED, HttpFault
from stock_assets_tests.test_parquet import materialise_parquet
from stock_assets_tests.test_pipeline import run_job
from stock_assets_tests.test_shards import run_sharded

ACCOUNT = "123456789012"  # moto's account
REGION = "eu-west-1"

# --- a small evaluator of Allow statements (enough for these documents) --------------------------


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str) -> re.Pattern:
    # IAM wildcards: * any run of characters (slashes too), ? one character; nothing else special.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.S)


def allows(policy: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        if not any(
            _glob(a.lower()).fullmatch(action.lower()) for a in _as_list(statement["Action"])
        ):
            continue
        if not any(_glob(r).fullmatch(resource) for r in _as_list(statement["Resource"])):
            continue
        conditions = statement.get("Condition", {})
        # Only StringLike is used; an absent context key fails it, as in IAM.
        if set(conditions) - {"StringLike"}:
            continue
        if all(
            key in context and any(_glob(p).fullmatch(context[key]) for p in _as_list(patterns))
            for key, patterns in conditions.get("StringLike", {}).items()
        ):
            return True
    return False


def test_the_evaluator_denies_what_is_not_granted():
    policy = iam.pipeline_role_policy(Naming(), REGION, ACCOUNT)
    source = Naming().source_bucket
    assert allows(policy, "s3:GetObject", f"arn:aws:s3:::{source}/Stocks/a.us.csv", {})
    assert not allows(policy, "s3:PutObject", f"arn:aws:s3:::{source}/Stocks/a.us.csv", {})
    assert not allows(policy, "s3:DeleteObject", f"arn:aws:s3:::{source}/Output/x", {})
    # Listing the source bucket only under the prefixes the pipeline reads.
    assert allows(policy, "s3:ListBucket", f"arn:aws:s3:::{source}", {"s3:prefix": "Stocks/"})
    assert not allows(policy, "s3:ListBucket", f"arn:aws:s3:::{source}", {})


# --- what each call needs ------------------------------------------------------------------------

_S3_ACTIONS = {
    "HeadBucket": "s3:ListBucket", "ListObjects": "s3:ListBucket", "ListObjectsV2": "s3:ListBucket",
    "HeadObject": "s3:GetObject", "GetObject": "s3:GetObject", "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads", "CopyObject": "s3:PutObject",
    "UploadPartCopy": "s3:PutObject",
}  # fmt: skip


def needed(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str, dict]]:
    """The (IAM action, resource ARN, condition context) triples an AWS call needs."""
    if service == "s3":
        bucket, key = params["Bucket"], params.get("Key")
        if operation == "DeleteObjects":  # one s3:DeleteObject per key
            return [
                ("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{o['Key']}", {})
                for o in params["Delete"]["Objects"]
            ]
        action = _S3_ACTIONS.get(operation, f"s3:{operation}")
        resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")
        context = {"s3:prefix": params["Prefix"]} if "Prefix" in params else {}
        found = [(action, resource, context)]
        if "CopySource" in params:  # a copy also reads its source
            source = params["CopySource"]
            if isinstance(source, str):
                source_arn = "arn:aws:s3:::" + source.lstrip("/").split("?")[0]
            else:
                source_arn = f"arn:aws:s3:::{source['Bucket']}/{source['Key']}"
            found.append(("s3:GetObject", source_arn, {}))
        return found
    if service == "sns":
        if operation == "ListTopics":
            return [("sns:ListTopics", "*", {})]
        arn = params.get("TopicArn") or f"arn:aws:sns:{REGION}:{ACCOUNT}:{params['Name']}"
        return [(f"sns:{operation}", arn, {})]
    raise AssertionError(f"unexpected service {service}")


@pytest.fixture
def aws_calls(monkeypatch) -> list[tuple[str, str, dict]]:
    """Every AWS API call made in this process (paginators and transfers included)."""
    calls: list[tuple[str, str, dict]] = []
    original = BaseClient._make_api_call

    def recording(self, operation_name, api_params):
        calls.append((self.meta.service_model.service_name, operation_name, dict(api_params)))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    return calls


def denied(policy: dict, calls: list[tuple[str, str, dict]]) -> list[str]:
    found = []
    for service, operation, params in calls:
        for action, resource, context in needed(service, operation, params):
            if not allows(policy, action, resource, context):
                found.append(f"{operation} → {action} on {resource} {context or ''}")
    return sorted(set(found))


def test_the_pipeline_role_policy_allows_every_call_the_pipeline_makes(
    seeded_stack, naming, aws_calls, s3_client
):
    topic = boto3.client("sns").create_topic(Name=naming.sns_topic)["TopicArn"]
    s3_client.put_object(Bucket=naming.monitored_bucket, Key="a/.SUCCESS", Body=b"")
    del aws_calls[:]  # the setup above is the test's, not the pipeline's
    # A whole run, the Parquet copy its automation makes next, the sharded job (its scratch
    # parts, multipart uploads and clean-up), a tick of the marker sensor, and a notification.
    assert run_job().success
    assert materialise_parquet(DagsterInstance.ephemeral()).success
    assert run_sharded(2, processes=False)[0]
    context = build_sensor_context(
        resources={"s3": S3Resource(), "settings": PipelineSettings()},
        instance=DagsterInstance.ephemeral(),  # the daemon's: the sensor reads the run queue
    )
    assert success_marker_sensor(context).run_requests
    SNSResource(topic=naming.sns_topic).publish("Dora_Explorer_Pipeline_Success", "body")
    operations = {op for _, op, _ in aws_calls}
    assert {"ListObjectsV2", "GetObject", "PutObject", "ListTopics", "Publish"} <= operations
    assert {"DeleteObjects", "ListMultipartUploads", "CreateMultipartUpload"} <= operations
    assert denied(iam.pipeline_role_policy(naming, REGION, ACCOUNT), aws_calls) == []
    # With the topic given as an ARN the lookup (sns:ListTopics) is not even needed.
    assert topic.endswith(naming.sns_topic)


def test_the_provisioner_policy_allows_every_call_provision_makes(
    clean_stack, naming, aws_calls, tmp_path, monkeypatch
):
    # A data folder with the sample files, so --upload-stocks is exercised too.
    (tmp_path / FILTER_NAME).write_bytes(SAMPLE_FILTER.read_bytes())
    (tmp_path / "Stocks").symlink_to(SAMPLE_STOCKS)
    monkeypatch.setenv("STOCK_ASSETS_DATA_DIR", str(tmp_path))
    config = ProvisionConfig(
        naming=naming, region=REGION, emails=["dora@example.com"], marker_policy=True,
        upload_stocks=True, database_url=clean_stack.env["STOCK_ASSETS_DATABASE_URL"],
    )  # fmt: skip
    provision(config, echo=lambda _: None)
    provision(config, echo=lambda _: None)  # the second, idempotent pass takes other paths
    operations = {op for _, op, _ in aws_calls}
    assert {
        "CreateBucket",
        "PutBucketPolicy",
        "CreateTopic",
        "Subscribe",
        "PutObject",
    } <= operations
    assert denied(iam.provisioner_policy(naming, REGION, ACCOUNT), aws_calls) == []


def test_a_topic_given_as_an_arn_is_checked_not_created_and_is_the_policies_resource(
    clean_stack, aws_calls
):
    """STOCK_ASSETS_SNS_TOPIC may be a topic's ARN (say, a topic another account owns): provision
    checks it exists and subscribes to it, publishing needs no lookup, and both policies name
    that ARN itself (not an ARN inside an ARN)."""
    sns = boto3.client("sns")
    arn = sns.create_topic(Name="shared-course-topic")["TopicArn"]
    naming = Naming(sns_topic_override=arn)
    del aws_calls[:]
    config = ProvisionConfig(
        naming=naming, region=REGION, emails=["dora@example.com"], filter_file=SAMPLE_FILTER
    )
    assert provision(config, echo=lambda _: None).topic_arn == arn
    assert denied(iam.provisioner_policy(naming, REGION, ACCOUNT), aws_calls) == []
    assert [t["TopicArn"] for t in sns.list_topics()["Topics"]] == [arn]  # nothing created
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    assert [s["Endpoint"] for s in subscriptions] == ["dora@example.com"]
    del aws_calls[:]
    SNSResource(topic=arn).publish("Dora_Explorer_Pipeline_Success", "body")
    assert [operation for _, operation, _ in aws_calls] == ["Publish"]
    policy = iam.pipeline_role_policy(naming, REGION, ACCOUNT)
    assert denied(policy, aws_calls) == []
    assert [s["Resource"] for s in policy["Statement"] if s["Sid"] == "Notify"] == [[arn]]
    assert "sns:ListTopics" not in json.dumps(policy)
    # An ARN of a topic that does not exist is a clear error, not a topic made up elsewhere.
    missing = ProvisionConfig(
        naming=Naming(sns_topic_override=arn + "-gone"), region=REGION, filter_file=SAMPLE_FILTER
    )
    with pytest.raises(ValueError, match="does not exist"):
        provision(missing, echo=lambda _: None)
    assert len(sns.list_topics()["Topics"]) == 1


# --- provision applies the grader policy of choice -----------------------------------------------


@pytest.fixture
def config(clean_stack, naming) -> ProvisionConfig:
    return ProvisionConfig(naming=naming, region=REGION, filter_file=SAMPLE_FILTER)


def bucket_policy(s3_client, bucket: str) -> dict | None:
    try:
        return json.loads(s3_client.get_bucket_policy(Bucket=bucket)["Policy"])
    except s3_client.exceptions.ClientError:
        return None


def test_marker_policy_lets_anyone_put_markers_and_nothing_else(config, s3_client, naming):
    config.marker_policy = True
    lines: list[str] = []
    provision(config, echo=lines.append)
    assert any("marker-only grader bucket policy" in line for line in lines)
    applied = bucket_policy(s3_client, naming.monitored_bucket)
    assert applied == iam.grader_marker_bucket_policy(naming)
    [statement] = applied["Statement"]
    assert (statement["Principal"], statement["Action"], statement["Resource"]) == (
        "*", ["s3:PutObject"], [f"arn:aws:s3:::{naming.monitored_bucket}/*.SUCCESS"]
    )  # fmt: skip
    assert bucket_policy(s3_client, naming.source_bucket) is None  # the source stays private
    block = s3_client.get_public_access_block(Bucket=naming.monitored_bucket)
    assert block["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
    # Anything else the grader might try is outside the document.
    for action in ("s3:GetObject", "s3:ListBucket", "s3:DeleteObject"):
        arn = f"arn:aws:s3:::{naming.monitored_bucket}/x.SUCCESS"
        assert not allows(applied, action, arn, {})
    assert not allows(applied, "s3:PutObject", f"arn:aws:s3:::{naming.monitored_bucket}/x.csv", {})


def test_public_grader_policy_comes_from_iam_and_excludes_the_marker_policy(
    config, s3_client, naming
):
    config.public_grader_policy = True
    provision(config, echo=lambda _: None)
    expected = iam.public_grader_bucket_policies(naming)
    for bucket in (naming.source_bucket, naming.monitored_bucket):
        assert bucket_policy(s3_client, bucket) == expected[bucket]
    config.marker_policy = True
    with pytest.raises(ValueError, match="choose one grader policy"):
        provision(config, dry_run=True, echo=lambda _: None)


def test_marker_policy_after_the_public_one_makes_the_source_private_again(
    config, s3_client, naming
):
    """Switching to --marker-policy takes the earlier public grader access away: the source
    bucket's public statements go (an operator's own stay) and its public access block is
    restored; a re-run finds nothing to do."""
    config.public_grader_policy = True
    provision(config, echo=lambda _: None)
    own = {"Sid": "OpsRead", "Effect": "Allow", "Action": ["s3:GetObject"],
           "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
           "Resource": [f"arn:aws:s3:::{naming.source_bucket}/*"]}  # fmt: skip
    public = bucket_policy(s3_client, naming.source_bucket)
    s3_client.put_bucket_policy(
        Bucket=naming.source_bucket,
        Policy=json.dumps({**public, "Statement": [*public["Statement"], own]}),
    )
    config.public_grader_policy, config.marker_policy = False, True
    lines: list[str] = []
    provision(config, echo=lines.append)
    assert bucket_policy(s3_client, naming.source_bucket)["Statement"] == [own]
    block = s3_client.get_public_access_block(Bucket=naming.source_bucket)
    assert all(block["PublicAccessBlockConfiguration"].values())
    assert any("public grader statements removed" in line for line in lines)
    s3_client.delete_bucket_policy(Bucket=naming.source_bucket)
    again: list[str] = []
    provision(config, echo=again.append)
    assert bucket_policy(s3_client, naming.source_bucket) is None
    assert any("no public grader access" in line for line in again)


def test_a_refused_grader_policy_leaves_the_public_access_block_up(config, s3_proxy, s3_client):
    """The block is lowered so the policy can go on; if S3 then refuses the policy (an
    account-wide block, say), the bucket must not stay without its own block."""
    s3_proxy.faults.append(
        HttpFault(method="PUT", path_contains="?policy", status=403, body=ACCESS_DENIED)
    )
    config.public_grader_policy = True
    with pytest.raises(ClientError, match="AccessDenied"):
        provision(config, echo=lambda _: None)
    block = s3_client.get_public_access_block(Bucket=config.naming.source_bucket)
    assert all(block["PublicAccessBlockConfiguration"].values())


def test_cli_provision_marker_policy(clean_stack, s3_client, naming, capsys):
    assert main(["provision", "--marker-policy", "--filter-file", str(SAMPLE_FILTER)]) == 0
    err = capsys.readouterr().err
    assert "--marker-policy lets anyone put objects ending in .SUCCESS" in err
    assert "WARNING" not in err
    assert bucket_policy(s3_client, naming.monitored_bucket) == iam.grader_marker_bucket_policy(
        naming
    )
    with pytest.raises(SystemExit) as exit_info:  # one grader policy or the other
        main(["provision", "--marker-policy", "--public-grader-policy"])
    assert exit_info.value.code == 2


# --- stock-assets iam ----------------------------------------------------------------------------


def test_cli_iam_prints_every_document_for_the_configured_names(capsys, monkeypatch):
    monkeypatch.setenv("STOCK_ASSETS_COHORT", "FTDE2301")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert main(["iam", "--account-id", ACCOUNT]) == 0
    printed = json.loads(capsys.readouterr().out)
    naming = Naming(cohort="FTDE2301")
    assert list(printed) == list(iam.POLICY_NAMES)
    assert printed == iam.policy_documents(naming, "eu-west-2", ACCOUNT)
    assert f"arn:aws:sns:eu-west-2:{ACCOUNT}:FTDE2301-mbd-predict-dora-explorer-SNS" in json.dumps(
        printed["pipeline-role"]
    )

    assert main(["iam", "--policy", "marker-bucket"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == iam.grader_marker_bucket_policy(naming)
    assert "no --account-id" in captured.err

    assert main(["iam", "--account-id", "12345"]) == 2
    assert "12 digits" in capsys.readouterr().err
