"""Issue 17's Parquet copy: the conversion on moto S3, the asset after a real pipeline run, its
place outside stock_pipeline_job, and the emails its automation runs do not send."""

import io
import math
from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, build_run_status_sensor_context

from stock_assets.definitions import defs
from stock_assets.metadata import PARQUET, TableMetadata, asset_materializations
from stock_assets.pipeline.columns import OUTPUT_COLUMNS
from stock_assets.pipeline.parquet import (
    PARQUET_KEY,
    PARQUET_SCHEMA,
    SOURCE_FINGERPRINT_META,
    SOURCE_VERSION_META,
    write_parquet_copy,
)
from stock_assets.pipeline.run import FINGERPRINT_META, CsvObjectError
from stock_assets.resources import PipelineSettings, SNSResource
from stock_assets.sensors import sns_on_pipeline_success
from stock_assets.settings import OUTPUT_KEY
from stock_assets_tests.test_notifications import inbox, topic  # noqa: F401  (a fixture)
from stock_assets_tests.test_pipeline import output_lines, run_job


def parquet_object(s3_client, naming) -> tuple[bytes, dict]:
    obj = s3_client.get_object(Bucket=naming.source_bucket, Key=PARQUET_KEY)
    return obj["Body"].read(), obj["Metadata"]


def expected_rows(lines: list[str]) -> list[tuple]:
    """The CSV's rows as the Parquet types hold them (None for an empty percentage)."""
    rows = []
    for line in lines:
        day, o, h, low, c, volume, pct, change, company = line.split(",")
        prices = [float(v) for v in (o, h, low, c)]
        rows.append(
            (date.fromisoformat(day), *prices, int(volume), float(pct) if pct else None,
             float(change), company)
        )  # fmt: skip
    return rows


def materialise_parquet(instance: DagsterInstance):
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[PARQUET], instance=instance, raise_on_error=False
    )


def test_the_parquet_copy_equals_the_csv_row_for_row(seeded_stack, s3_client, naming):
    instance = DagsterInstance.ephemeral()
    assert run_job().success
    result = materialise_parquet(instance)
    assert result.success
    lines = output_lines(s3_client, naming)

    body, meta = parquet_object(s3_client, naming)
    frame = pd.read_parquet(io.BytesIO(body))
    assert list(frame.columns) == OUTPUT_COLUMNS
    got = [
        tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)
        for row in frame.itertuples(index=False, name=None)
    ]
    assert got == expected_rows(lines)  # values and order
    assert frame["daily_percent_change"].isna().sum() == 1  # blj's Open = 0 row
    assert pq.read_schema(io.BytesIO(body)).equals(PARQUET_SCHEMA)

    # Which CSV it came from, on the object and in the asset's metadata.
    csv_head = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    assert meta[SOURCE_VERSION_META] == csv_head["ETag"].strip('"')
    assert meta[SOURCE_FINGERPRINT_META] == csv_head["Metadata"][FINGERPRINT_META]
    [event] = asset_materializations(result, PARQUET.to_user_string())
    assert TableMetadata.extract(event.metadata).row_count == len(lines)
    assert event.metadata["bytes"].value == len(body)
    assert event.metadata["source_csv_version"].value == meta[SOURCE_VERSION_META]
    assert [c.name for c in TableMetadata.extract(event.metadata).column_schema.columns] == (
        OUTPUT_COLUMNS
    )


def test_row_groups_are_bounded_and_prunable(seeded_stack, s3_client, naming):
    assert run_job().success
    copy = write_parquet_copy(s3_client, naming.source_bucket, row_group_rows=1000)
    body, _ = parquet_object(s3_client, naming)
    parquet = pq.ParquetFile(io.BytesIO(body))
    rows = len(output_lines(s3_client, naming))
    assert rows > 1000 and copy.rows == rows == parquet.metadata.num_rows
    assert parquet.metadata.num_row_groups == copy.row_groups == math.ceil(rows / 1000)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(copy.row_groups)]
    assert sizes[:-1] == [1000] * (len(sizes) - 1)
    first = parquet.metadata.row_group(0)
    assert first.column(0).compression == "ZSTD"
    stats = {first.column(i).path_in_schema: first.column(i).statistics for i in (0, 8)}
    assert stats["stock_date"].has_min_max and stats["company_name"].has_min_max
    # A reader's filter skips the row groups whose statistics cannot match.
    tmusp = pq.read_table(io.BytesIO(body), filters=[("company_name", "=", "tmusp")])
    assert set(tmusp.column("company_name").to_pylist()) == {"tmusp"} and tmusp.num_rows > 0


def test_without_the_csv_the_copy_says_to_make_it_first(seeded_stack, s3_client, naming):
    with pytest.raises(CsvObjectError, match="materialise historical_stock_data_csv first"):
        write_parquet_copy(s3_client, naming.source_bucket)


def test_the_course_job_does_not_select_the_parquet_asset():
    job = defs.resolve_job_def("stock_pipeline_job")
    assert PARQUET not in job.asset_layer.executable_asset_keys
    assert AssetKey("historical_stock_data_csv") in job.asset_layer.executable_asset_keys
    spec = defs.resolve_assets_def(PARQUET).specs_by_key[PARQUET]
    assert spec.automation_condition is not None
    assert AssetKey("historical_stock_data_csv") in {d.asset_key for d in spec.deps}
    # The automation sensor targets the Parquet copy alone and is on by default.
    sensor = defs.resolve_sensor_def("parquet_automation")
    assert sensor.default_status.value == "RUNNING"
    assert sensor.asset_selection.resolve(defs.resolve_asset_graph()) == {PARQUET}


def test_a_parquet_refresh_sends_no_course_email(seeded_stack, topic, naming):  # noqa: F811
    instance = DagsterInstance.ephemeral()
    assert run_job().success
    result = materialise_parquet(instance)
    assert result.success
    with build_run_status_sensor_context(
        sensor_name="sns_on_pipeline_success",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(),
        resources={"sns": SNSResource(topic=naming.sns_topic), "settings": PipelineSettings()},
    ) as context:
        sns_on_pipeline_success(context)
    assert inbox(seeded_stack, naming) == []


def test_an_empty_csv_gives_an_empty_typed_copy(seeded_stack, s3_client, naming):
    s3_client.put_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY, Body=b"")
    copy = write_parquet_copy(s3_client, naming.source_bucket)
    body, _ = parquet_object(s3_client, naming)
    table = pq.read_table(io.BytesIO(body))
    assert copy.rows == table.num_rows == 0 and table.schema.equals(PARQUET_SCHEMA)
