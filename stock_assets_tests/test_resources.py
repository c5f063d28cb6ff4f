"""The S3 resource's client: SigV4 signatures (presigned reads too), or none when asked."""

import os
import subprocess
import sys

import pytest


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


def test_clients_from_the_shared_session_still_follow_the_environment(local_stack, monkeypatch):
    """The process keeps one boto3 session (its clients are cheaper to make); a client made
    after the endpoint or region changed must use the new ones, as a fresh session would."""
    from stock_assets.resources import SNSResource, StockS3Resource

    first = StockS3Resource().get_client()
    assert first.meta.endpoint_url == local_stack.env["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, "ap-southeast-2")
    later = StockS3Resource().get_client()
    assert later.meta.endpoint_url == "http://127.0.0.1:9"
    assert later.meta.region_name == "ap-southeast-2"
    assert SNSResource(topic="t").get_client().meta.endpoint_url == "http://127.0.0.1:9"
    assert first.meta.endpoint_url == local_stack.env["AWS_ENDPOINT_URL"]  # made earlier, unchanged


def test_aws_region_alone_sets_every_clients_region(local_stack, monkeypatch):
    """The README sets AWS_REGION, as ECS and Lambda do; botocore itself reads only
    AWS_DEFAULT_REGION. An explicit region_name still wins."""
    from stock_assets.resources import SNSResource, StockS3Resource

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert StockS3Resource().get_client().meta.region_name == "eu-central-1"
    assert SNSResource(topic="t").get_client().meta.region_name == "eu-central-1"
    chosen = StockS3Resource(region_name="us-west-2").get_client()
    assert chosen.meta.region_name == "us-west-2"


def test_provision_and_the_pipeline_agree_on_a_profiles_region(tmp_path, monkeypatch):
    """Without the variables, the profile's region (~/.aws/config): `provision` creates the
    topic where the pipeline's clients later look for it."""
    config = tmp_path / "config"
    config.write_text("[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    # A fresh process, as a run and provision are (this one's boto3 session has read its
    # config already).
    code = (
        "from stock_assets.resources import StockS3Resource as S;"
        "from stock_assets.aws import aws_region;"
        "print(aws_region(), S().get_client().meta.region_name)"
    )
    client = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert client.stdout.split() == ["ap-south-1", "ap-south-1"]


def test_without_any_region_setting_every_client_uses_the_courses_region(tmp_path):
    """No variable, no profile: provision and the pipeline's clients agree on eu-west-1 (the SNS
    client had no region at all and failed; S3's was us-east-1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    code = (
        "from stock_assets.resources import StockS3Resource as S, SNSResource as N;"
        "from stock_assets.aws import aws_region;"
        "print(S().get_client().meta.region_name, N(topic='t').get_client().meta.region_name,"
        " aws_region())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.split() == ["eu-west-1", "eu-west-1", "eu-west-1"]


@pytest.mark.parametrize("value", ["four", "0", "-2"])
def test_a_shard_count_that_is_not_one_or_more_names_its_variable(monkeypatch, value):
    from stock_assets.resources import PipelineSettings

    monkeypatch.setenv("STOCK_ASSETS_SHARDS", value)
    with pytest.raises(ValueError, match=f"STOCK_ASSETS_SHARDS must be .* not '{value}'"):
        PipelineSettings.from_env()
