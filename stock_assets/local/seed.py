"""Seed the dev stack (and the tests' stack): the course's buckets and folders, the filter,
Scripts/ and every stock file, in one call. Builds on `stock_assets.bucket_layout`, which
`stock-assets provision` shares.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stock_assets.bucket_layout import (
    FILTER_NAME,
    ensure_layout,
    find_data_dir,
    stock_files,
    upload_files,
    upload_filter_and_scripts,
)
from stock_assets.settings import Naming


@dataclass
class SeedResult:
    source_bucket: str
    monitored_bucket: str
    files_uploaded: int
    bytes_uploaded: int


def seed_source_bucket(
    client: Any,
    naming: Naming,
    data_dir: Path | None = None,
    region: str = "eu-west-1",
    filter_bytes: bytes | None = None,
    files: Iterator[tuple[str, bytes]] | None = None,
) -> SeedResult:
    """Buckets, the four folders, Stocks/, the filter file and Scripts/ (SQL and entry)."""
    data_dir = data_dir or find_data_dir()
    source, monitored = naming.source_bucket, naming.monitored_bucket
    ensure_layout(client, naming, region)
    if filter_bytes is None:
        filter_bytes = (data_dir / FILTER_NAME).read_bytes()
    upload_filter_and_scripts(client, source, filter_bytes)
    count, size = upload_files(
        client, source, files if files is not None else stock_files(data_dir)
    )
    return SeedResult(source, monitored, count, size)
