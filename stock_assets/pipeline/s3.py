"""Small S3 helpers over a plain boto3 client (AWS or any S3-compatible endpoint)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


# Listings kept for reuse within one run (see `list_objects`); only the latest run's.
_snapshots: dict[tuple[str, str, str], list[S3Object]] = {}


def list_objects(
    client: Any, bucket: str, prefix: str, snapshot: str | None = None
) -> list[S3Object]:
    """Every object under `prefix`, following pagination (a listing page holds 1,000 keys).

    `snapshot` (a run id): the first listing made under it is reused by later calls with the
    same snapshot, bucket and prefix in this process. Three assets of a run look at `Stocks/`
    one after the other; listing a full course bucket (7,000+ keys) three times costs seconds,
    and one listing per run also means every step of the run sees the same files.
    """
    key = (snapshot or "", bucket, prefix)
    if snapshot is not None and key in _snapshots:
        return list(_snapshots[key])
    paginator = client.get_paginator("list_objects_v2")
    objects = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):  # a "folder" placeholder, not a file
                continue
            objects.append(
                S3Object(
                    item["Key"], int(item["Size"]), item.get("ETag", ""), item.get("LastModified")
                )
            )
    if snapshot is not None:
        if any(kept != snapshot for kept, _, _ in _snapshots):
            _snapshots.clear()  # a new run: forget the last one's listings
        _snapshots[key] = list(objects)
    return objects


def listing_fingerprint(objects: Sequence[S3Object]) -> str:
    """Changes whenever any object under the prefix is added, removed or rewritten."""
    digest = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: o.key):
        digest.update(f"{obj.key}\t{obj.size}\t{obj.etag}\n".encode())
    return digest.hexdigest()[:16]


def read_object(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def map_objects(
    client: Any,
    bucket: str,
    keys: Sequence[str],
    handle: Callable[[str, bytes], T],
    max_workers: int = 8,
) -> Iterator[T]:
    """GET each key and apply `handle(key, body)` in a thread pool; results in `keys` order.

    Both the GET (network) and a pyarrow-based `handle` release the GIL, so threads overlap the
    two. boto3 clients are thread-safe.
    """

    def fetch_and_handle(key: str) -> T:
        return handle(key, read_object(client, bucket, key))

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3-read") as pool:
        yield from pool.map(fetch_and_handle, keys)


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"
