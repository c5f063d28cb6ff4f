"""`stock-assets provision` and `stock-assets trigger`: the course's AWS setup, idempotently.

Works against AWS and against the local stack alike: it only uses boto3 (and psycopg2 for the
table), so `AWS_ENDPOINT_URL` decides where it goes. Every step can run again safely: existing
buckets, folders, topics and subscriptions are left as they are, uploads are overwritten with the
same content, the table is created only if missing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stock_assets.aws import aws_client, aws_region
from stock_assets.bucket_layout import (
    FILTER_NAME,
    ensure_layout,
    find_data_dir,
    stock_files,
    upload_files,
    upload_filter_and_scripts,
)
from stock_assets.iam import Policy, marker_bucket_policies, public_grader_bucket_policies
from stock_assets.settings import DEFAULT_REGION, SOURCE_FOLDERS, TABLE_NAME, Naming
from stock_assets.sns import find_topic_arn, is_topic_arn

EMAILS_ENV = "STOCK_ASSETS_NOTIFY_EMAILS"
STATIC_IP_ENV = "STOCK_ASSETS_STATIC_IP"
GRADER_CSV_HEADER = (
    "Name",
    "Surname",
    "Source_bucket",
    "Monitored_bucket",
    "SNS_topic",
    "Static_IP",
)
PUBLIC_POLICY_WARNING = (
    "WARNING: --public-grader-policy makes the source bucket readable by ANYONE on the internet "
    "and lets ANYONE write to the monitored bucket (and so start pipeline runs). The course's "
    "graders need it; remove it (`aws s3api delete-bucket-policy`) once grading is done. "
    "--marker-policy gives graders what they need to trigger runs and nothing more."
)
MARKER_POLICY_NOTE = (
    "note: --marker-policy lets anyone put objects ending in .SUCCESS into the monitored bucket "
    "(and so start pipeline runs); nothing else is public."
)


def emails_from_env(environ: dict[str, str] | None = None) -> list[str]:
    raw = (os.environ if environ is None else environ).get(EMAILS_ENV, "")
    return [e.strip() for e in raw.split(",") if e.strip()]


@dataclass
class ProvisionConfig:
    naming: Naming
    region: str = DEFAULT_REGION
    emails: Sequence[str] = ()
    public_grader_policy: bool = False
    # Least privilege: anyone may put `*.SUCCESS` into the monitored bucket, nothing else.
    marker_policy: bool = False
    static_ip: str = ""
    filter_file: Path | None = None
    upload_stocks: bool = False
    database_url: str | None = None


@dataclass
class Step:
    """One thing provisioning does: what it is, and how to do it (returns what happened)."""

    description: str
    run: Callable[[], str]


@dataclass
class ProvisionResult:
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    topic_arn: str | None = None


def grader_csv(naming: Naming, topic: str, static_ip: str) -> str:
    """The grader submission: a header and one row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(GRADER_CSV_HEADER)
    writer.writerow(
        (naming.first_name, naming.surname, naming.source_bucket, naming.monitored_bucket,
         topic, static_ip)
    )  # fmt: skip
    return out.getvalue()


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except s3.exceptions.ClientError:
        return False


def _layout_step(s3: Any, config: ProvisionConfig) -> Step:
    naming = config.naming

    def run() -> str:
        existed = [
            b for b in (naming.source_bucket, naming.monitored_bucket) if _bucket_exists(s3, b)
        ]
        ensure_layout(s3, naming, config.region)
        return "created" if not existed else f"already there: {', '.join(existed)}; folders ensured"

    folders = ", ".join(SOURCE_FOLDERS)
    return Step(
        f"buckets s3://{naming.source_bucket} (folders {folders}) and "
        f"s3://{naming.monitored_bucket} in {config.region}",
        run,
    )


_BLOCK_ALL = dict.fromkeys(
    ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
)
# New buckets block public policies by default, and both grader policies grant anonymous
# principals something: lift only the policy blocks, never the ACL ones.
_ALLOW_PUBLIC_POLICY = {**_BLOCK_ALL, "BlockPublicPolicy": False, "RestrictPublicBuckets": False}


def _policy_steps(s3: Any, config: ProvisionConfig) -> list[Step]:
    if config.public_grader_policy and config.marker_policy:
        raise ValueError("choose one grader policy: --public-grader-policy or --marker-policy")
    policies: dict[str, Policy]
    if config.public_grader_policy:
        policies, label = public_grader_bucket_policies(config.naming), "PUBLIC grader"
    elif config.marker_policy:
        policies, label = marker_bucket_policies(config.naming), "marker-only grader"
    else:
        return []
    steps = []
    for bucket, policy in policies.items():

        def run(bucket: str = bucket, policy: Policy = policy, label: str = label) -> str:
            s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=_ALLOW_PUBLIC_POLICY
            )
            try:
                s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
            except BaseException:  # refused: the bucket must not stay without its block
                s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=_BLOCK_ALL)
                raise
            return f"{label} policy set"

        steps.append(Step(f"{label} bucket policy on s3://{bucket}", run))
    if config.marker_policy:
        source = config.naming.source_bucket
        steps.append(Step(f"s3://{source} private", lambda: _make_private(s3, config.naming)))
    return steps


def _public(statement: dict[str, Any]) -> bool:
    return statement.get("Principal") in ("*", {"AWS": "*"})


def _make_private(s3: Any, naming: Naming) -> str:
    """Take away what an earlier --public-grader-policy granted on the source bucket: its public
    grader statements (an operator's own statements stay), then the public access block."""
    source = naming.source_bucket
    granted = {
        statement["Sid"] for statement in public_grader_bucket_policies(naming)[source]["Statement"]
    }
    try:
        current = json.loads(s3.get_bucket_policy(Bucket=source)["Policy"])
    except s3.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
            raise
        current = {"Statement": []}
    kept = [s for s in current["Statement"] if not (s.get("Sid") in granted and _public(s))]
    if len(kept) == len(current["Statement"]):
        return "no public grader access to take away"
    if kept:
        s3.put_bucket_policy(Bucket=source, Policy=json.dumps({**current, "Statement": kept}))
    else:
        s3.delete_bucket_policy(Bucket=source)
    if not any(_public(statement) for statement in kept):
        s3.put_public_access_block(Bucket=source, PublicAccessBlockConfiguration=_BLOCK_ALL)
    return "public grader statements removed, public access blocked again"


def ensure_topic(sns: Any, name: str) -> tuple[str, bool]:
    """The topic's ARN, and whether this call created it. A topic given as an ARN (possibly in
    another account) must exist already: provision creates topics from a name only."""
    if is_topic_arn(name):
        try:
            sns.get_topic_attributes(TopicArn=name)
        except sns.exceptions.NotFoundException:
            raise ValueError(
                f"SNS topic {name} does not exist. Create it, or set STOCK_ASSETS_SNS_TOPIC to a "
                "topic name for provision to create it."
            ) from None
        return name, False
    existing = find_topic_arn(sns, name)
    # CreateTopic is idempotent: it returns the existing topic's ARN.
    return existing or sns.create_topic(Name=name)["TopicArn"], existing is None


def _topic_steps(sns: Any, config: ProvisionConfig, result: ProvisionResult) -> list[Step]:
    name = config.naming.sns_topic

    def topic() -> str:
        result.topic_arn, created = ensure_topic(sns, name)
        return f"{'created' if created else 'already there'}: {result.topic_arn}"

    def subscriptions() -> str:
        assert result.topic_arn is not None
        pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=result.topic_arn)
        present = {s["Endpoint"] for page in pages for s in page.get("Subscriptions", [])}
        added = [e for e in config.emails if e not in present]
        for email in added:
            sns.subscribe(TopicArn=result.topic_arn, Protocol="email", Endpoint=email)
        note = " (each address must click the confirmation link AWS emails)" if added else ""
        return (
            f"subscribed {len(added)}, already subscribed {len(config.emails) - len(added)}{note}"
        )

    steps = [Step(f"SNS topic {name}", topic)]
    if config.emails:
        steps.append(Step(f"email subscriptions: {', '.join(config.emails)}", subscriptions))
    return steps


def _upload_steps(s3: Any, config: ProvisionConfig) -> list[Step]:
    bucket = config.naming.source_bucket

    def filter_and_scripts() -> str:
        path = config.filter_file or find_data_dir() / FILTER_NAME
        keys = upload_filter_and_scripts(s3, bucket, path.read_bytes())
        return "uploaded " + ", ".join(keys)

    def stocks() -> str:
        count, size = upload_files(s3, bucket, stock_files(find_data_dir()))
        return f"uploaded {count} files ({size / 1e6:.1f} MB)"

    where = str(config.filter_file) if config.filter_file else "$STOCK_ASSETS_DATA_DIR or data/"
    steps = [
        Step(f"upload CompanyNames/{FILTER_NAME} (from {where}) and Scripts/", filter_and_scripts)
    ]
    if config.upload_stocks:
        steps.append(Step("upload Stocks/ from the data folder", stocks))
    return steps


def _table_step(config: ProvisionConfig) -> Step:
    def run() -> str:
        if not config.database_url:
            return "SKIPPED: STOCK_ASSETS_DATABASE_URL is not set"
        from stock_assets.database import connect, redact_url
        from stock_assets.pipeline.load import ensure_table

        conn = connect(config.database_url, connect_timeout=10)
        try:
            with conn:
                ensure_table(conn, TABLE_NAME)
        finally:
            conn.close()
        return f"ready in {redact_url(config.database_url)}"

    return Step(f"table {TABLE_NAME} (created if missing, never emptied)", run)


def plan(
    config: ProvisionConfig, s3: Any, sns: Any, result: ProvisionResult | None = None
) -> list[Step]:
    """The steps in order. Clients may be None for a dry run: nothing is called until run()."""
    result = result or ProvisionResult()
    steps = [_layout_step(s3, config)]
    steps += _policy_steps(s3, config)
    steps += _topic_steps(sns, config, result)
    steps += _upload_steps(s3, config)
    steps.append(_table_step(config))
    return steps


def provision(
    config: ProvisionConfig,
    s3: Any = None,
    sns: Any = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> ProvisionResult:
    result = ProvisionResult()
    if not dry_run and (s3 is None or sns is None):
        s3 = s3 or aws_client("s3", region_name=config.region)
        sns = sns or aws_client("sns", region_name=config.region)
    for number, step in enumerate(plan(config, s3, sns, result), start=1):
        if dry_run:
            echo(f"  {number}. would ensure {step.description}")
            continue
        outcome = step.run()
        result.outcomes.append((step.description, outcome))
        echo(f"  {number}. {step.description}: {outcome}")
    return result


def config_from_args(args: Any) -> ProvisionConfig:
    emails = list(dict.fromkeys([*(args.email or []), *emails_from_env()]))
    return ProvisionConfig(
        naming=Naming.from_env(),
        region=aws_region(),
        emails=emails,
        public_grader_policy=args.public_grader_policy,
        marker_policy=getattr(args, "marker_policy", False),
        static_ip=args.static_ip or os.environ.get(STATIC_IP_ENV, ""),
        filter_file=args.filter_file,
        upload_stocks=args.upload_stocks,
        database_url=os.environ.get("STOCK_ASSETS_DATABASE_URL") or None,
    )


def cli_provision(args: Any) -> int:
    config = config_from_args(args)
    target = os.environ.get("AWS_ENDPOINT_URL") or f"AWS ({config.region})"
    if config.public_grader_policy:
        print(PUBLIC_POLICY_WARNING, file=sys.stderr)
    if config.marker_policy:
        print(MARKER_POLICY_NOTE, file=sys.stderr)
    print(f"{'plan for' if args.dry_run else 'provisioning'} {target}:")
    result = provision(config, dry_run=args.dry_run)
    topic = result.topic_arn or config.naming.sns_topic
    print("\ngrader submission (CSV):")
    print(grader_csv(config.naming, topic, config.static_ip), end="")
    if not config.static_ip:
        print(f"(Static_IP is empty: pass --static-ip or set {STATIC_IP_ENV})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# stock-assets trigger
# ----------------------------------------------------------------------------------------------


def marker_key(key: str | None) -> str:
    """`.SUCCESS` by default; a prefix ending in `/` gets `.SUCCESS` appended."""
    key = (key or ".SUCCESS").lstrip("/")
    if key.endswith("/"):
        key += ".SUCCESS"
    if not key.endswith(".SUCCESS"):
        raise ValueError(
            f"marker key {key!r} must end in .SUCCESS (the sensor only reacts to those)"
        )
    return key


def drop_marker(s3: Any, bucket: str, key: str) -> dict[str, str]:
    """Put a `.SUCCESS` object. Its body is unique, so even a re-upload of the same key within the
    same second is a new object (new ETag) to the sensor."""
    body = json.dumps({
        "created_at": datetime.now(UTC).isoformat(),
        "by": "stock-assets trigger",
        "nonce": uuid.uuid4().hex,
    }).encode()  # fmt: skip
    response = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return {"bucket": bucket, "key": key, "etag": response["ETag"].strip('"')}


def cli_trigger(args: Any) -> int:
    from stock_assets.notifications import DAEMON_SENSOR_LOOP_SECONDS, sensor_interval_seconds

    naming = Naming.from_env()
    try:
        key = marker_key(args.key)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    marker = drop_marker(aws_client("s3"), naming.monitored_bucket, key)
    print(
        f"dropped s3://{marker['bucket']}/{marker['key']} (ETag {marker['etag']}); "
        "success_marker_sensor starts stock_pipeline_job within "
        f"~{max(DAEMON_SENSOR_LOOP_SECONDS, sensor_interval_seconds())}s "
        "if the Dagster daemon is running"
    )
    return 0
