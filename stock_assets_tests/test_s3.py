"""The bulk reader (`ObjectReader`): a presigned GET when it answers cleanly, boto3's
`get_object` for anything else. On the real moto server, faults injected by an HTTP proxy."""

import base64
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import FlexibleChecksumError, ReadTimeoutError

from stock_assets.pipeline.s3 import (
    ObjectReader,
    ObjectTooLarge,
    _checksum_matches,
    presigned_get_session,
)
from stock_assets.resources import StockS3Resource
from stock_assets_tests.faults import FaultyHttpProxy, HttpFault

BODIES = {f"Stocks/file{i}.csv": f"Date,Open\n2020-01-0{i},{i}.5\n".encode() * 50 for i in range(4)}


@pytest.fixture
def bucket(local_stack, s3_client) -> str:
    name = f"reader-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    for key, body in BODIES.items():
        s3_client.put_object(Bucket=name, Key=key, Body=body)  # boto3 stores a CRC-32
    return name


@pytest.fixture
def proxy(local_stack):
    proxy = FaultyHttpProxy(local_stack.moto.endpoint_url).start()
    yield proxy
    proxy.stop()


def reader_through(proxy: FaultyHttpProxy, bucket: str, **s3_fields) -> ObjectReader:
    client = StockS3Resource(endpoint_url=proxy.url, **s3_fields).get_client()
    return ObjectReader(client, bucket, presigned_get_session(client))


def gets_of(proxy: FaultyHttpProxy, key: str) -> list[tuple[str, dict[str, str]]]:
    """(query string, headers) of each GET the proxy saw for `key`."""
    return [
        (urlsplit(path).query, headers)
        for (method, path), headers in zip(proxy.requests, proxy.request_headers, strict=True)
        if method == "GET" and urlsplit(path).path.endswith(key)
    ]


def is_presigned(query: str) -> bool:
    return "X-Amz-Signature" in parse_qs(query)


def test_clean_answers_are_taken_from_the_presigned_get(proxy, bucket):
    reader = reader_through(proxy, bucket)
    with ThreadPoolExecutor(max_workers=4) as pool:  # the reader is shared by threads, as in a run
        bodies = dict(zip(BODIES, pool.map(reader.read, BODIES), strict=True))
    assert bodies == BODIES
    assert reader.fallbacks == 0
    for key in BODIES:
        [(query, headers)] = gets_of(proxy, key)  # one GET per object, no second read
        assert is_presigned(query)
        params = parse_qs(query)
        assert params["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        # AWS refuses a presigned request that lacks a header its signature covers.
        for name in params["X-Amz-SignedHeaders"][0].split(";"):
            assert name in headers, name
        assert headers["x-amz-checksum-mode"] == "ENABLED"


@pytest.mark.parametrize(
    "fault",
    [
        HttpFault(method="GET", status=503, times=1),
        HttpFault(method="GET", status=403, times=1),
        HttpFault(method="GET", drop=True, times=1),
        HttpFault(method="GET", corrupt=True, times=1),
    ],
    ids=["503", "403", "dropped connection", "corrupted body"],
)
def test_an_unclean_answer_is_read_again_through_get_object(proxy, bucket, fault):
    proxy.faults.append(fault)
    reader = reader_through(proxy, bucket)
    key = next(iter(BODIES))
    assert reader.read(key) == BODIES[key]
    assert fault.hits == 1
    assert reader.fallbacks == 1
    (first, _), (second, headers) = gets_of(proxy, key)
    assert is_presigned(first)
    assert not is_presigned(second) and headers["authorization"].startswith("AWS4-HMAC-SHA256")


def test_a_truncated_answer_is_read_again_even_without_a_checksum(proxy, bucket, s3_client):
    # An object stored without a checksum: nothing but the length can tell a short body.
    plain = boto3.client(
        "s3",
        endpoint_url=s3_client.meta.endpoint_url,
        config=Config(request_checksum_calculation="when_required"),
    )
    key, body = "Stocks/plain.csv", b"Date,Open\n2020-01-02,1.5\n" * 200
    plain.put_object(Bucket=bucket, Key=key, Body=body)
    assert "ChecksumCRC32" not in s3_client.head_object(
        Bucket=bucket, Key=key, ChecksumMode="ENABLED"
    )
    fault = HttpFault(method="GET", truncate=True, times=1)
    proxy.faults.append(fault)
    reader = reader_through(proxy, bucket)
    assert reader.read(key) == body
    assert fault.hits == 1 and reader.fallbacks == 1


def test_a_body_that_stays_corrupted_fails_botocores_checksum_validation(proxy, bucket):
    proxy.faults.append(HttpFault(method="GET", corrupt=True))
    reader = reader_through(proxy, bucket)
    with pytest.raises(FlexibleChecksumError):
        reader.read(next(iter(BODIES)))


@pytest.mark.parametrize("presigned", [True, False], ids=["presigned GET", "get_object"])
def test_the_size_limit_acts_on_content_length_before_the_body_is_read(proxy, bucket, presigned):
    """Spec §5's input guard: an object over the per-file limit is refused on its GET's
    Content-Length, its body never read. Here every answer's body comes late, and cut short:
    a reader that read the body first would time out or get a short body, and the presigned
    path would then GET again."""
    limit, key, stall = 1000, "Stocks/huge.us.csv", 5.0
    client = StockS3Resource(
        endpoint_url=proxy.url, read_timeout_seconds=1, max_attempts=1
    ).get_client()
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * (limit + 1))
    proxy.faults.append(HttpFault(method="GET", stall=stall, truncate=True))
    session = presigned_get_session(client) if presigned else None
    reader = ObjectReader(client, bucket, session, max_bytes=limit)
    started = time.monotonic()
    with pytest.raises(ObjectTooLarge) as refused:
        reader.read(key)
    assert time.monotonic() - started < stall / 2  # the body was not waited for
    assert (refused.value.key, refused.value.size) == (key, limit + 1)
    [(query, _)] = gets_of(proxy, key)  # one GET, not followed by get_object
    assert is_presigned(query) is presigned
    assert reader.fallbacks == 0
    # At the limit exactly, the object is read (whole: no fault this time).
    proxy.faults.clear()
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * limit)
    assert reader.read(key) == b"x" * limit


def test_a_missing_key_raises_what_get_object_raises(proxy, bucket):
    reader = reader_through(proxy, bucket)
    with pytest.raises(reader.client.exceptions.NoSuchKey):
        reader.read("Stocks/not-there.csv")
    # Not counted as read again: the run reports it as "missing", and the "GETs were read
    # again" warning would point at proxies and CA bundles for nothing.
    assert reader.fallbacks == 0


def test_a_slow_answer_times_out_on_both_paths_with_botocores_bounded_retries(proxy, bucket):
    fault = HttpFault(method="GET", delay=1.5)
    proxy.faults.append(fault)
    reader = reader_through(proxy, bucket, read_timeout_seconds=0.5, max_attempts=2)
    with pytest.raises(ReadTimeoutError):
        reader.read(next(iter(BODIES)))
    assert fault.hits == 1 + 2  # the presigned try, then get_object's two attempts


def test_without_a_presigned_session_every_read_uses_get_object(proxy, bucket):
    client = StockS3Resource(endpoint_url=proxy.url).get_client()
    reader = ObjectReader(client, bucket, presigned=None)
    key = next(iter(BODIES))
    assert reader.read(key) == BODIES[key]
    [(query, headers)] = gets_of(proxy, key)
    assert not is_presigned(query) and "authorization" in headers


def crc32_header(body: bytes) -> str:
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"x-amz-checksum-crc32": crc32_header(b"abc")}, True),
        ({"x-amz-checksum-crc32": crc32_header(b"abd")}, False),
        ({}, True),  # stored without a checksum: get_object accepts it too
        ({"x-amz-checksum-sha256": "x"}, False),  # another algorithm: botocore checks it
        ({"x-amz-checksum-crc64nvme": "x"}, False),
        ({"x-amz-checksum-crc32": "AAAAAA==-3", "x-amz-checksum-type": "COMPOSITE"}, True),
        ({"x-amz-checksum-mode": "ENABLED"}, True),  # not an algorithm
    ],
)
def test_checksum_rule(headers, accepted):
    assert _checksum_matches(headers, b"abc") is accepted
