"""The `.SUCCESS` sensor watches the overridden monitored bucket (spec §2, §6), not the default
one: on the seeded stack, where the default bucket exists and holds a marker of its own."""

import json

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context
from dagster_aws.s3 import S3Resource

from stock_assets.notifications import MARKER_BUCKET_TAG, MARKER_KEYS_TAG
from stock_assets.resources import PipelineSettings
from stock_assets.sensors import success_marker_sensor

OTHER = "markers-elsewhere"


def tick(settings: PipelineSettings, cursor: str | None = None):
    context = build_sensor_context(
        cursor=cursor,
        resources={"s3": S3Resource(), "settings": settings},
        instance=DagsterInstance.ephemeral(),
    )
    return success_marker_sensor(context)


@pytest.fixture
def default_bucket_has_a_marker(seeded_stack, s3_client, naming) -> str:
    s3_client.head_bucket(Bucket=naming.monitored_bucket)  # the default bucket exists
    s3_client.put_object(Bucket=naming.monitored_bucket, Key="default/.SUCCESS", Body=b"")
    return naming.monitored_bucket


def test_a_missing_overridden_bucket_is_a_skip_naming_that_bucket(default_bucket_has_a_marker):
    result = tick(PipelineSettings(monitored_bucket="no-such-bucket-here"))
    assert isinstance(result, SkipReason)
    assert "s3://no-such-bucket-here does not exist" in result.skip_message
    assert "stock-assets provision" in result.skip_message


@pytest.mark.parametrize("how", ["setting", "environment"])
def test_markers_are_read_from_the_overridden_bucket_only(
    default_bucket_has_a_marker, s3_client, monkeypatch, how
):
    s3_client.create_bucket(
        Bucket=OTHER, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    if how == "setting":
        settings = PipelineSettings(monitored_bucket=OTHER)
    else:
        monkeypatch.setenv("STOCK_ASSETS_MONITORED_BUCKET", OTHER)
        settings = PipelineSettings.from_env()
    first = tick(settings)
    assert isinstance(first, SensorResult) and not first.run_requests
    s3_client.put_object(Bucket=OTHER, Key="there/.SUCCESS", Body=b"")
    [request] = tick(settings, first.cursor).run_requests
    assert request.tags[MARKER_BUCKET_TAG] == OTHER
    assert json.loads(request.tags[MARKER_KEYS_TAG]) == ["there/.SUCCESS"]
