"""The S3 resource's client: SigV4 signatures (presigned reads too), or none when asked."""


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
