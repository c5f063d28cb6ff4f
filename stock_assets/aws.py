"""boto3 clients from one session per process (Dagster-free; the resources use it)."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError

from stock_assets.settings import DEFAULT_REGION

# One boto3 session per process and profile: a new session parses botocore's endpoint and
# service-model JSON again for its first client, and a process makes several clients (the S3
# resource keeps one per instance; SNS, the sensors and the CLI make their own). Sessions are
# not thread-safe: clients are made under a lock, and the clients themselves are. Endpoint and
# region are read from the environment for each client; credentials once per process (a role's
# refresh themselves).
_SESSION_LOCK = threading.Lock()


@functools.cache
def _session(profile_name: str | None) -> boto3.session.Session:
    return boto3.session.Session(profile_name=profile_name)


def aws_region(profile_name: str | None = None) -> str:
    """The region every client uses: AWS_REGION (what the README, ECS and Lambda set; botocore
    itself reads only AWS_DEFAULT_REGION and the profile), AWS_DEFAULT_REGION, the profile's own
    (~/.aws/config), else the course's eu-west-1 (where provision makes everything; botocore
    would have none, or us-east-1 for S3)."""
    from_env = os.environ.get("AWS_REGION")
    if from_env:
        return from_env
    try:
        with _SESSION_LOCK:
            return _session(profile_name).region_name or DEFAULT_REGION
    except BotoCoreError:  # a profile named but missing, a config file that does not parse
        return DEFAULT_REGION


def aws_client(service: str, profile_name: str | None = None, **kwargs: Any) -> Any:
    """A boto3 client from the process's shared session (see `_session`), in `aws_region`
    unless `region_name` is given."""
    if not kwargs.get("region_name"):
        kwargs["region_name"] = aws_region(profile_name)
    with _SESSION_LOCK:
        return _session(profile_name).client(service, **kwargs)
