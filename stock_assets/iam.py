"""Every IAM and bucket policy document of the project, derived from the naming convention.

Instead of the course's AmazonS3FullAccess / AmazonSNSFullAccess, the pipeline's role gets only
the buckets, prefixes, topic and actions it uses, and the operator who runs `provision` only what
provisioning does. Graders get, by choice:
- `grader_marker_bucket_policy` (least privilege): anyone may put `*.SUCCESS` objects into the
  monitored bucket, and nothing else (`stock-assets provision --marker-policy`);
- `public_grader_bucket_policies` (the course's): anyone may list and read both buckets and write
  the monitored one (`stock-assets provision --public-grader-policy`, with a warning).

`stock-assets iam` prints the documents for the configured names, region and account.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from stock_assets.aws import aws_region
from stock_assets.settings import (
    FILTER_KEY,
    OUTPUT_KEY,
    PARQUET_KEY,
    REJECTED_PREFIX,
    SCRATCH_PREFIX,
    SCRIPTS_PREFIX,
    STOCKS_PREFIX,
    Naming,
)
from stock_assets.sns import is_topic_arn

Policy = dict[str, Any]


def _bucket(name: str) -> str:
    return f"arn:aws:s3:::{name}"


def _objects(bucket: str, pattern: str) -> str:
    return f"arn:aws:s3:::{bucket}/{pattern}"


def sns_topic_arn(naming: Naming, region: str, account_id: str) -> str:
    """The topic's ARN: STOCK_ASSETS_SNS_TOPIC may already be one (say, another account's)."""
    topic = naming.sns_topic
    return topic if is_topic_arn(topic) else f"arn:aws:sns:{region}:{account_id}:{topic}"


def _find_topic(naming: Naming) -> list[dict[str, Any]]:
    # A topic given by name is looked up (ListTopics, which has no resource scope); by ARN, not.
    if is_topic_arn(naming.sns_topic):
        return []
    return [
        {"Sid": "FindTopic", "Effect": "Allow", "Action": ["sns:ListTopics"], "Resource": ["*"]}
    ]


def pipeline_role_policy(
    naming: Naming, region: str = "eu-west-1", account_id: str = "*"
) -> Policy:
    """What the code location (webserver, daemon, runs) needs, and nothing more."""
    source, monitored = naming.source_bucket, naming.monitored_bucket
    topic = sns_topic_arn(naming, region, account_id)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListSourcePrefixes",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [_bucket(source)],
                "Condition": {
                    "StringLike": {"s3:prefix": [STOCKS_PREFIX + "*", "CompanyNames/*", "Output/*"]}
                },
            },
            {
                "Sid": "ReadInputs",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [
                    _objects(source, STOCKS_PREFIX + "*"),
                    _objects(source, FILTER_KEY),
                    _objects(source, OUTPUT_KEY),
                    _objects(source, SCRATCH_PREFIX + "*"),
                ],
            },
            {
                "Sid": "WriteOutputs",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [
                    _objects(source, OUTPUT_KEY),
                    _objects(source, REJECTED_PREFIX + "*"),
                    _objects(source, PARQUET_KEY),
                    _objects(source, SCRATCH_PREFIX + "*"),
                ],
            },
            {
                # The sharded job's scratch parts: removed after its run, or after a crashed one.
                "Sid": "RemoveShardScratch",
                "Effect": "Allow",
                "Action": ["s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": [_objects(source, SCRATCH_PREFIX + "*")],
            },
            {
                "Sid": "FindShardUploads",
                "Effect": "Allow",
                "Action": ["s3:ListBucketMultipartUploads"],
                "Resource": [_bucket(source)],
            },
            {
                # The marker sensor only lists (key, ETag, LastModified); it never reads one.
                "Sid": "WatchMarkers",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [_bucket(monitored)],
            },
            {
                "Sid": "Notify",
                "Effect": "Allow",
                "Action": ["sns:Publish"],
                "Resource": [topic],
            },
            *_find_topic(naming),
        ],
    }


def provisioner_policy(naming: Naming, region: str = "eu-west-1", account_id: str = "*") -> Policy:
    """What `stock-assets provision` needs (run once by an operator, not by the pipeline)."""
    source, monitored = naming.source_bucket, naming.monitored_bucket
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Buckets",
                "Effect": "Allow",
                "Action": [
                    "s3:CreateBucket",
                    "s3:ListBucket",
                    "s3:PutBucketPolicy",
                    "s3:GetBucketPolicy",
                    "s3:DeleteBucketPolicy",  # --marker-policy after --public-grader-policy
                    "s3:PutBucketPublicAccessBlock",
                ],
                "Resource": [_bucket(source), _bucket(monitored)],
            },
            {
                # The four folders, the filter, Scripts/, and Stocks/ with --upload-stocks.
                "Sid": "SeedObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [
                    _objects(source, "CompanyNames/*"),
                    _objects(source, SCRIPTS_PREFIX + "*"),
                    _objects(source, STOCKS_PREFIX + "*"),
                    _objects(source, "Output/"),
                ],
            },
            {
                "Sid": "Topic",
                "Effect": "Allow",
                "Action": [
                    # GetTopicAttributes: a topic given as an ARN is checked, not created.
                    "sns:CreateTopic",
                    "sns:GetTopicAttributes",
                    "sns:Subscribe",
                    "sns:ListSubscriptionsByTopic",
                ],
                "Resource": [sns_topic_arn(naming, region, account_id)],
            },
            *_find_topic(naming),
        ],
    }


def grader_marker_bucket_policy(naming: Naming) -> Policy:
    """Bucket policy for the monitored bucket: anyone may put `*.SUCCESS` objects, nothing else.

    This is what the course's graders need (they drop a marker to trigger a run). It is public
    by design, so `provision` only applies it behind an explicit flag.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "GradersMayDropSuccessMarkers",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:PutObject"],
                "Resource": [_objects(naming.monitored_bucket, "*.SUCCESS")],
            }
        ],
    }


def public_grader_bucket_policies(naming: Naming) -> dict[str, Policy]:
    """The course's grader access, bucket → policy: anyone may list and read the source bucket
    (output, scripts) and list, read and write the monitored one. Public on purpose and far
    broader than `grader_marker_bucket_policy`; `provision` applies it only behind
    --public-grader-policy, with a warning."""

    def statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
        return {"Sid": sid, "Effect": "Allow", "Principal": "*", "Action": actions,
                "Resource": resources}  # fmt: skip

    source, monitored = naming.source_bucket, naming.monitored_bucket
    return {
        source: {
            "Version": "2012-10-17",
            "Statement": [
                statement("GraderList", ["s3:ListBucket"], [_bucket(source)]),
                statement("GraderRead", ["s3:GetObject"], [_objects(source, "*")]),
            ],
        },
        monitored: {
            "Version": "2012-10-17",
            "Statement": [
                statement("GraderList", ["s3:ListBucket"], [_bucket(monitored)]),
                statement(
                    "GraderDropMarker", ["s3:GetObject", "s3:PutObject"], [_objects(monitored, "*")]
                ),
            ],
        },
    }


def marker_bucket_policies(naming: Naming) -> dict[str, Policy]:
    """The least-privilege grader access, bucket → policy (only the monitored bucket)."""
    return {naming.monitored_bucket: grader_marker_bucket_policy(naming)}


# `stock-assets iam --policy NAME` → the document.
POLICY_NAMES = ("pipeline-role", "provisioner", "marker-bucket")


def policy_documents(
    naming: Naming, region: str = "eu-west-1", account_id: str = "*"
) -> dict[str, Policy]:
    return {
        "pipeline-role": pipeline_role_policy(naming, region, account_id),
        "provisioner": provisioner_policy(naming, region, account_id),
        "marker-bucket": grader_marker_bucket_policy(naming),
    }


def cli_iam(args: argparse.Namespace) -> int:
    """Print the policy documents: all of them as one JSON object keyed by name, or one bare
    document (`--policy NAME`), ready for `aws iam put-role-policy --policy-document`."""
    if args.account_id and not re.fullmatch(r"\d{12}", args.account_id):
        print(f"--account-id must be 12 digits, not {args.account_id!r}", file=sys.stderr)
        return 2
    account = args.account_id or "*"
    if not args.account_id:
        print(
            "note: no --account-id, so ARNs hold '*' for the account; pass your 12-digit id",
            file=sys.stderr,
        )
    documents = policy_documents(Naming.from_env(), aws_region(), account)
    chosen = documents[args.policy] if args.policy else documents
    print(json.dumps(chosen, indent=2))
    return 0
