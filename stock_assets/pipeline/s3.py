"""Small S3 helpers over a plain boto3 client (AWS or any S3-compatible endpoint): listing,
the bulk reader (`ObjectReader`: presigned GETs, `get_object` for anything unclean), parallel
reads in order."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError
from botocore.httpsession import URLLib3Session
from botocore.utils import get_environ_proxies

from stock_assets.settings import STOCKS_PREFIX


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def list_objects(client: Any, bucket: str, prefix: str) -> list[S3Object]:
    """Every object under `prefix`, following pagination (a listing page holds 1,000 keys)."""
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
    return objects


def listing_fingerprint(objects: Sequence[S3Object]) -> str:
    """Changes whenever any object under the prefix is added, removed or rewritten."""
    digest = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: o.key):
        digest.update(f"{obj.key}\t{obj.size}\t{obj.etag}\n".encode())
    return digest.hexdigest()[:16]


def read_object(client: Any, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
    """The object's bytes; `ObjectTooLarge` (body left unread) if its Content-Length is over
    `max_bytes`."""
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    if max_bytes is not None and response["ContentLength"] > max_bytes:
        body.close()
        raise ObjectTooLarge(key, response["ContentLength"])
    return body.read()


class ObjectTooLarge(Exception):
    """An object's Content-Length is over the per-file limit; its body was not read."""

    def __init__(self, key: str, size: int) -> None:
        super().__init__(f"{key} is {size} bytes")
        self.key = key
        self.size = size


# Response headers that name a checksum algorithm: x-amz-checksum-<algorithm>, but not these two.
_NOT_ALGORITHMS = {"x-amz-checksum-mode", "x-amz-checksum-type"}


def presigned_get_session(client: Any, verify: bool | str | None = None) -> URLLib3Session:
    """botocore's own HTTP session, set up as `client`'s is: timeouts, pool size, proxies, TLS
    verification (`verify`: the resource's setting; None means AWS_CA_BUNDLE, else verify)."""
    config = client.meta.config
    return URLLib3Session(
        verify=verify if verify is not None else os.environ.get("AWS_CA_BUNDLE") or True,
        proxies=config.proxies or get_environ_proxies(client.meta.endpoint_url),
        timeout=(config.connect_timeout, config.read_timeout),
        max_pool_connections=config.max_pool_connections,
        client_cert=config.client_cert,
        proxies_config=config.proxies_config,
    )


class ObjectReader:
    """Reads whole objects from one bucket: the bulk download of up to 1,000 files.

    Each GET first goes by a presigned URL (signed by the boto3 client, with the same
    credentials) over botocore's HTTP session (`presigned_get_session`). That skips botocore's
    per-call machinery (event hooks, endpoint rules, response parsing, retry bookkeeping): about
    half the CPU per GET on the local stack, most of the difference time holding the GIL the
    transformation needs (figures: benchmarks/results/README.md).

    Only a clean answer is taken from that path: status 200, the whole Content-Length, and its
    CRC-32 equal to the one S3 returns (the URL asks for it, as `get_object` does). Anything
    else (an error status, a timeout, a refused connection, a short body, another checksum
    algorithm) and the object is read again with `get_object`. So retries (botocore's standard
    mode), error messages and checksum validation remain botocore's; the first failed try is
    extra. `fallbacks` counts those re-reads. `presigned=None` reads everything with
    `get_object`. The caller owns the session (and closes it).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        presigned: URLLib3Session | None = None,
        url_expiry_seconds: int = 900,
        max_bytes: int | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.max_bytes = max_bytes
        self._session = presigned
        self._expiry = url_expiry_seconds
        self._lock = threading.Lock()
        self.fallbacks = 0

    def read(self, key: str) -> bytes:
        if self._session is not None:
            body = self._read_presigned(key)
            if body is not None:
                return body
        body = read_object(self.client, self.bucket, key, self.max_bytes)
        if self._session is not None:  # a re-read; a missing object (NoSuchKey) is not one
            with self._lock:
                self.fallbacks += 1
        return body

    def _read_presigned(self, key: str) -> bytes | None:
        try:
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key, "ChecksumMode": "ENABLED"},
                ExpiresIn=self._expiry,
            )
            # The checksum mode is a signed header of the URL: it must be sent as one.
            request = AWSRequest("GET", url, headers={"x-amz-checksum-mode": "ENABLED"})
            prepared = request.prepare()
            prepared.stream_output = True  # the body is read only once its length is accepted
            response = self._session.send(prepared)
            length = response.headers.get("content-length")
            if response.status_code != 200 or length is None:
                response.raw.close()
                return None
            if self.max_bytes is not None and int(length) > self.max_bytes:
                response.raw.close()  # not drained: the connection is dropped, not reused
                raise ObjectTooLarge(key, int(length))
            body = response.content
        # Timeouts, refused or dropped connections; once streamed, the body's read errors
        # come from urllib3 as they are.
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError):
            return None
        # botocore's HTTP session does not enforce Content-Length (get_object's body does): a
        # connection closed early would pass for the whole object where S3 sent no checksum.
        if int(length) != len(body):
            return None
        return body if _checksum_matches(response.headers, body) else None


def _checksum_matches(headers: Any, body: bytes) -> bool:
    """Whether the fast path may take `body`, judged as botocore judges a GET's checksum.

    A CRC-32 must match. A multipart object's CRC-32 is a checksum of its parts' ("…-3"), which
    botocore does not check either; nor an object stored without a checksum. Any other
    algorithm: False, so that botocore reads the object and checks it.
    """
    names = {str(name).lower() for name in headers}
    algorithms = {n for n in names if n.startswith("x-amz-checksum-")} - _NOT_ALGORITHMS
    if algorithms - {"x-amz-checksum-crc32"}:
        return False
    crc32 = headers.get("x-amz-checksum-crc32")
    if crc32 is None or "-" in crc32:
        return True
    return crc32 == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()


def http_status(err: Exception) -> int:
    """The HTTP status of a botocore ClientError (0 when it has none)."""
    return getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


MISSING = "missing: listed in the filter but not found under Stocks/"


def read_files(
    reader: ObjectReader, names: list[str], unread: dict[str, str], concurrency: int
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each named file, in filter order; a name without an object, or whose
    object S3 refuses to hand over, goes to `unread` with the reason (the spec: an unreadable
    file is skipped and reported, not fatal). Only the named keys are read: the run never lists
    `Stocks/`."""
    exceptions = reader.client.exceptions

    def get(key: str) -> bytes | str:
        try:
            return reader.read(key)
        except exceptions.NoSuchKey:
            return MISSING
        except exceptions.ClientError as err:
            # A refusal about the object (403 AccessDenied, an archived object's
            # InvalidObjectState, a KMS key the role may not use) is the file's. Throttling and
            # server errors that outlived botocore's retries are an outage: they fail the run.
            status = http_status(err)
            if not 400 <= status < 500 or status in (408, 429):
                raise
            error = err.response.get("Error", {})
            return f"unreadable: S3 refused the GET ({error.get('Code')}: {error.get('Message')})"

    # The GETs release the GIL: threads overlap them with the transformation downstream. At
    # most a few reads per thread run ahead of the consumer, so bodies never pile up in memory.
    keys = iter(STOCKS_PREFIX + n for n in names)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-read") as pool:
        pending = deque(pool.submit(get, key) for key in itertools.islice(keys, 4 * concurrency))
        for name in names:
            body = pending.popleft().result()
            pending.extend(pool.submit(get, key) for key in itertools.islice(keys, 1))
            if isinstance(body, str):
                unread[name] = body
            else:
                yield name, body
