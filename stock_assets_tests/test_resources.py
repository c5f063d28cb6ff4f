"""The S3 client's timestamp shortcut: the same datetimes as botocore's own parser, faster."""

import botocore.utils
import pytest

from stock_assets.resources import _parse_timestamp


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-22T03:54:26.000Z",  # a listing's LastModified
        "2024-02-29T23:59:59Z",
        "Sun, 22 Nov 2026 03:54:26 GMT",  # a GET's Last-Modified header
        "Thu, 29 Feb 2024 00:00:00 GMT",
        "2026-11-22T03:54:26+01:00",  # neither form: botocore's parser
        1795335245,
        "1795335245.5",
    ],
)
def test_timestamps_parse_as_botocore_parses_them(value):
    ours, botocores = _parse_timestamp(value), botocore.utils.parse_timestamp(value)
    assert ours == botocores
    assert ours.utcoffset() == botocores.utcoffset()


@pytest.mark.parametrize("value", ["garbage GMT", "2026-13-40T00:00:00Z", "Sun, 99 Foo 2026 GMT"])
def test_malformed_timestamps_fail_as_in_botocore(value):
    with pytest.raises(ValueError):
        botocore.utils.parse_timestamp(value)
    with pytest.raises(ValueError):
        _parse_timestamp(value)


def test_the_s3_client_signs_with_sigv4_unless_told_to_use_no_signature(local_stack):
    from botocore import UNSIGNED

    from stock_assets.resources import StockS3Resource

    signed = StockS3Resource().get_client()
    assert signed.meta.config.signature_version == "s3v4"
    url = signed.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert "X-Amz-Signature=" in url
    unsigned = StockS3Resource(use_unsigned_session=True).get_client()
    assert unsigned.meta.config.signature_version is UNSIGNED
    url = unsigned.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert "Signature" not in url
