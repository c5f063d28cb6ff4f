"""Least-privilege IAM policy documents, derived from the naming convention.

Instead of the course's AmazonS3FullAccess / AmazonSNSFullAccess, the pipeline's role gets only
the buckets, prefixes, topic and actions it uses; graders get to put `.SUCCESS` markers into the
monitored bucket and nothing else. `stock-assets iam` prints them; `provision` can apply the
bucket policy.
"""

from __future__ import annotations

from typing import Any

from stock_assets.settings import (
    FILTER_KEY,
    OUTPUT_KEY,
    REJECTED_PREFIX,
    SCRIPTS_PREFIX,
    STOCKS_PREFIX,
    Naming,
)

Policy = dict[str, Any]


def _bucket(name: str) -> str:
    return f"arn:aws:s3:::{name}"


def _objects(bucket: str, pattern: str) -> str:
    return f"arn:aws:s3:::{bucket}/{pattern}"


def pipeline_role_policy(
    naming: Naming, region: str = "eu-west-1", account_id: str = "*"
) -> Policy:
    """What the code location (webserver, daemon, runs) needs, and nothing more."""
    source, monitored = naming.source_bucket, naming.monitored_bucket
    topic_arn = f"arn:aws:sns:{region}:{account_id}:{naming.sns_topic}"
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
                ],
            },
            {
                "Sid": "WriteOutputs",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [
                    _objects(source, OUTPUT_KEY),
                    _objects(source, REJECTED_PREFIX + "*"),
                ],
            },
            {
                "Sid": "WatchMarkers",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetObject"],
                "Resource": [_bucket(monitored), _objects(monitored, "*")],
            },
            {
                "Sid": "Notify",
                "Effect": "Allow",
                "Action": ["sns:Publish"],
                "Resource": [topic_arn],
            },
            {
                # The SNS resource looks the topic up by name when given no ARN.
                "Sid": "FindTopic",
                "Effect": "Allow",
                "Action": ["sns:ListTopics"],
                "Resource": ["*"],
            },
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
                    "s3:PutBucketPublicAccessBlock",
                ],
                "Resource": [_bucket(source), _bucket(monitored)],
            },
            {
                "Sid": "SeedObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [
                    _objects(source, "CompanyNames/*"),
                    _objects(source, SCRIPTS_PREFIX + "*"),
                    _objects(source, "Output/"),
                    _objects(source, STOCKS_PREFIX),
                    _objects(source, "CompanyNames/"),
                    _objects(source, SCRIPTS_PREFIX),
                ],
            },
            {
                "Sid": "Topic",
                "Effect": "Allow",
                "Action": ["sns:CreateTopic", "sns:Subscribe", "sns:ListSubscriptionsByTopic"],
                "Resource": [f"arn:aws:sns:{region}:{account_id}:{naming.sns_topic}"],
            },
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
