"""The source bucket as the course lays it out, and the data and scripts that fill it.

`stock-assets provision` (against AWS or the local stack) and the dev stack's seeding
(`stock_assets.local.seed`) both build on these. Only boto3 calls, so it works against moto and
AWS alike.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from stock_assets.pipeline.sql_files import read_sql
from stock_assets.settings import FILTER_KEY, SCRIPTS_PREFIX, SOURCE_FOLDERS, STOCKS_PREFIX, Naming

ARCHIVE_NAME = "stocks_top1000.tar.xz"
FILTER_NAME = "top_companies.txt"
INSERT_QUERY_KEY = f"{SCRIPTS_PREFIX}insert_query.sql"
ENTRY_KEY = f"{SCRIPTS_PREFIX}entry.py"


def find_data_dir() -> Path:
    """Where the real data lives: $STOCK_ASSETS_DATA_DIR when set (and then only there: a
    folder named by mistake must not quietly load other data), else the repository's `data/`."""
    configured = os.environ.get("STOCK_ASSETS_DATA_DIR")
    folder = Path(configured) if configured else Path(__file__).resolve().parents[1] / "data"
    if (folder / FILTER_NAME).exists():
        return folder
    raise FileNotFoundError(
        "no data folder with top_companies.txt found; set STOCK_ASSETS_DATA_DIR "
        f"(looked in {folder})"
    )


def stock_files(data_dir: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) for each stock file: from the archive, else from a Stocks/ folder."""
    archive = data_dir / ARCHIVE_NAME
    if archive.exists():
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".csv"):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    yield Path(member.name).name, extracted.read()
        return
    folder = data_dir / "Stocks"
    for path in sorted(folder.glob("*.csv")):
        yield path.name, path.read_bytes()


def ensure_bucket(client: Any, bucket: str, region: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
        return
    except client.exceptions.ClientError:
        pass
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(**kwargs)


def ensure_layout(client: Any, naming: Naming, region: str = "eu-west-1") -> None:
    """Both buckets and the source bucket's four folders (empty "folder/" objects)."""
    ensure_bucket(client, naming.source_bucket, region)
    ensure_bucket(client, naming.monitored_bucket, region)
    for folder in SOURCE_FOLDERS:
        client.put_object(Bucket=naming.source_bucket, Key=folder, Body=b"")


def upload_files(
    client: Any, bucket: str, files: Iterator[tuple[str, bytes]], prefix: str = STOCKS_PREFIX
) -> tuple[int, int]:
    count = size = 0

    def put(item: tuple[str, bytes]) -> int:
        name, body = item
        client.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=body)
        return len(body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        for written in pool.map(put, files):
            count += 1
            size += written
    return count, size


def scripts() -> dict[str, bytes]:
    """What Scripts/ holds, key → body: the SQL the load runs and the processing code's entry
    (`python -m stock_assets.entry`), where the course's graders look for them."""
    return {
        INSERT_QUERY_KEY: read_sql("insert_query.sql").encode(),
        ENTRY_KEY: resources.files("stock_assets").joinpath("entry.py").read_bytes(),
    }


def upload_filter_and_scripts(client: Any, bucket: str, filter_bytes: bytes) -> list[str]:
    """CompanyNames/top_companies.txt, and Scripts/ (the SQL and the entry); their keys."""
    uploads = {FILTER_KEY: filter_bytes, **scripts()}
    for key, body in uploads.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return list(uploads)
