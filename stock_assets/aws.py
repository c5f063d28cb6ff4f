"""boto3 clients from one session per process (Dagster-free; the resources use it)."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import boto3

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


def aws_client(service: str, profile_name: str | None = None, **kwargs: Any) -> Any:
    """A boto3 client from the process's shared session (see `_session`)."""
    with _SESSION_LOCK:
        session = _session(profile_name)
        # AWS_REGION is what the README, ECS and Lambda set, but botocore reads only
        # AWS_DEFAULT_REGION and the profile: pass it on. Where none says, the course's region
        # (provision made everything there; botocore would have none, or us-east-1 for S3). An
        # explicit region_name wins.
        if not kwargs.get("region_name"):
            kwargs["region_name"] = (
                os.environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
            )
        return session.client(service, **kwargs)
