"""The whole data path for real: moto S3, embedded PostgreSQL, Dagster materialisation."""

import csv
import io
from collections import Counter

import pytest
from dagster import AssetKey, DagsterInstance

from stock_assets.definitions import defs
from stock_assets.metadata import asset_materializations
from stock_assets.pipeline.companies import parse_company_filter
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, STOCKS_PREFIX
from stock_assets_tests.conftest import (
    SAMPLE_FILTER,
    SAMPLE_STOCKS,
    csv_as_table_rows,
    sample_files,
    table_rows,
)
from stock_assets_tests.test_transform import reference_line

FIRST_LINE = (
    "2015-10-27,65.17,65.17,63.056,63.187,36229,-3.0428111094061747,-1.983000000000004,tmusp"
)


def run_job(asset_keys: list[str] | None = None):
    job = defs.resolve_job_def("stock_pipeline_job")
    selection = [AssetKey(k) for k in asset_keys] if asset_keys else None
    return job.execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=selection
    )


def spec_csv_lines() -> list[str]:
    """The sample's output CSV by the spec's rule written the plain way (test_transform's
    oracle): every data line of each file the filter names, the files in filter order."""
    lines = []
    for name in parse_company_filter(SAMPLE_FILTER.read_bytes()).files:
        data = (SAMPLE_STOCKS / name).read_text().splitlines()[1:]
        lines += [reference_line(line, name.split(".")[0]) for line in data]
    return lines


def output_lines(s3_client, naming) -> list[str]:
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()
    return body.decode().splitlines()


def metadata(result, asset: str) -> dict:
    [materialization] = asset_materializations(result, asset)
    return {k: v.value for k, v in materialization.metadata.items()}


def test_job_writes_the_spec_csv_and_loads_the_table(seeded_stack, s3_client, naming, db):
    result = run_job()
    assert result.success

    lines = output_lines(s3_client, naming)
    assert lines[0] == FIRST_LINE
    # blj's Open = 0 row: kept, with an empty percentage.
    [blj_zero] = [
        line for line in lines if line.startswith("2008-02-07,") and line.endswith(",blj")
    ]
    assert blj_zero.split(",")[6] == ""
    # Only filter companies, in filter order; a.us.csv is in Stocks/ but not in the filter.
    companies = list(dict.fromkeys(line.rsplit(",", 1)[1] for line in lines))
    assert companies == ["tmusp", "hcn_i", "blj", "ccv-cl", "two", "flhk"]
    # The whole CSV, line for line: each file's rows in order, the files in filter order.
    assert lines == spec_csv_lines()

    # The table equals the CSV, row for row, with NULL (not '') where the CSV field is empty.
    assert Counter(table_rows(db)) == Counter(csv_as_table_rows(lines))

    csv_meta = metadata(result, "historical_stock_data_csv")
    assert csv_meta["dagster/row_count"] == len(lines)
    assert (
        csv_meta["stock_assets/rows_read"]
        == csv_meta["dagster/row_count"] + csv_meta["stock_assets/rows_rejected"]
    )
    assert csv_meta["stock_assets/files_skipped"] == 1 and "bxg.us.csv" in csv_meta["skipped_files"]
    assert csv_meta["stock_assets/open_zero_rows"] == 1
    assert csv_meta["reads_retried"] == 0  # every file came from its presigned GET
    table_meta = metadata(result, "historical_stocks_data")
    assert table_meta["dagster/row_count"] == len(lines)
    # How long each took, for the UI's health view.
    assert csv_meta["duration_seconds"] > 0 and table_meta["load_seconds"] > 0


def test_empty_file_is_reported_under_output_rejected(seeded_stack, s3_client, naming):
    result = run_job()
    key = f"Output/rejected/{result.run_id}/skipped_files.csv"
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=key)["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["file_name"], r["bytes"]) for r in rows] == [("bxg.us.csv", "0")]
    assert "empty" in rows[0]["reason"]


def test_files_read_and_skipped_add_up_to_the_files_selected(seeded_stack):
    result = run_job()
    meta = metadata(result, "historical_stock_data_csv")
    assert meta["stock_assets/files_skipped"] == 1  # bxg.us.csv is empty
    assert (
        meta["stock_assets/files_read"] + meta["stock_assets/files_skipped"]
        == meta["stock_assets/files_selected"]
    )


def test_a_file_in_a_subfolder_of_stocks_does_not_stand_in_for_the_named_file(
    seeded_stack, s3_client, naming, db
):
    assert run_job().success
    expected = output_lines(s3_client, naming)
    name = "tmusp.us.csv"  # in the filter: its rows open the CSV (FIRST_LINE)
    # Same file name one level down, listed after Stocks/<name>: it must not replace it.
    other = b"Date,Open,High,Low,Close,Volume,OpenInt\n1999-01-04,1,1,1,1,1,0\n"
    s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}zz/{name}", Body=other)
    assert run_job().success
    assert output_lines(s3_client, naming) == expected
    assert not any(line.startswith("1999-01-04") for line in expected)


def test_the_table_alone_before_any_csv_says_to_make_the_csv_first(seeded_stack):
    result = run_job(["historical_stocks_data"])
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "is not there to load: materialise historical_stock_data_csv first" in message


def test_second_run_changes_nothing(seeded_stack, s3_client, naming, db):
    assert run_job().success
    first_csv, first_rows = output_lines(s3_client, naming), sorted(table_rows(db))
    assert run_job().success
    assert output_lines(s3_client, naming) == first_csv
    assert sorted(table_rows(db)) == first_rows


def test_table_asset_alone_reloads_from_the_csv_in_s3(seeded_stack, s3_client, naming, db):
    assert run_job().success
    before = sorted(table_rows(db))
    with db.cursor() as cur:
        cur.execute("DELETE FROM historical_stocks_data WHERE company_name = 'tmusp'")
    # Remove the inputs: reloading the table must not need (or recompute) the CSV.
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    result = run_job(["historical_stocks_data"])
    assert result.success
    assert sorted(table_rows(db)) == before


def test_csv_asset_alone_does_not_touch_the_table(seeded_stack, s3_client, naming, db):
    assert run_job().success
    before = sorted(table_rows(db))
    s3_client.delete_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}flhk.us.csv")
    result = run_job(["historical_stock_data_csv"])
    assert result.success
    assert not any(line.endswith(",flhk") for line in output_lines(s3_client, naming))
    assert sorted(table_rows(db)) == before


def test_top_companies_alone_parses_the_filter_and_makes_nothing_else(
    seeded_stack, s3_client, naming, db
):
    assert run_job().success
    csv_before = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["ETag"]
    before = sorted(table_rows(db))
    # A new filter: the filter asset alone records it; the CSV and the table stay as they are.
    s3_client.put_object(Bucket=naming.source_bucket, Key=FILTER_KEY, Body=b"two.us.csv\n")
    result = run_job(["top_companies"])
    assert result.success
    made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert made == {"top_companies"}
    assert metadata(result, "top_companies")["first_files"] == "two.us.csv"
    assert s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["ETag"] == csv_before
    assert sorted(table_rows(db)) == before


def test_top_companies_records_the_filter_the_csv_was_made_from(seeded_stack, s3_client, naming):
    result = run_job()
    assert result.success
    recorded = metadata(result, "top_companies")["first_files"].split(", ")
    lines = output_lines(s3_client, naming)
    companies = list(dict.fromkeys(line.rsplit(",", 1)[1] for line in lines))
    # The CSV holds the recorded names' companies in that order (bxg.us.csv has no file).
    assert [f.removesuffix(".us.csv") for f in recorded if f != "bxg.us.csv"] == companies
    assert metadata(result, "top_companies")["files_selected"] == len(recorded) == 7


def test_a_load_that_fails_halfway_leaves_the_table_as_it_was(seeded_stack, s3_client, naming, db):
    assert run_job().success
    before = sorted(table_rows(db))
    # A CSV whose last row cannot be stored (a value longer than VARCHAR(56)): the COPY fails
    # after most rows went in, inside the transaction.
    good = "\n".join(output_lines(s3_client, naming)[:-1])
    bad = good + "\n2020-01-01,1.0,1.0,1.0,1.0,1,0.0,0.0," + "x" * 80 + "\n"
    s3_client.put_object(
        Bucket=naming.source_bucket,
        Key=OUTPUT_KEY,
        Body=bad.encode(),
        Metadata={"row-count": str(len(before))},
    )
    result = run_job(["historical_stocks_data"])
    assert not result.success
    assert sorted(table_rows(db)) == before


def test_row_count_mismatch_rolls_back(seeded_stack, s3_client, naming, db):
    assert run_job().success
    before = sorted(table_rows(db))
    body = "\n".join(output_lines(s3_client, naming)[:10]) + "\n"
    s3_client.put_object(
        Bucket=naming.source_bucket,
        Key=OUTPUT_KEY,
        Body=body.encode(),
        Metadata={"row-count": "11"},
    )
    result = run_job(["historical_stocks_data"])
    assert not result.success
    assert sorted(table_rows(db)) == before


def test_missing_filter_file_fails_with_a_clear_error(seeded_stack, s3_client, naming):
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    result = run_job()
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "top_companies.txt does not exist" in str(failure.event_specific_data.error.message)


def test_a_filter_whose_files_cannot_be_read_changes_nothing(seeded_stack, s3_client, naming, db):
    assert run_job().success
    before_rows = sorted(table_rows(db))
    before_csv = output_lines(s3_client, naming)
    # A filter naming no existing file (a typo'd prefix, say) would make an empty CSV: replacing
    # two million rows with nothing is a broken input, not a result.
    s3_client.put_object(
        Bucket=naming.source_bucket, Key=FILTER_KEY, Body=b"nope.us.csv\nbxg.us.csv\n"
    )
    result = run_job()
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "none of the 2 selected files could be read (first: nope.us.csv: missing" in message
    assert output_lines(s3_client, naming) == before_csv
    assert sorted(table_rows(db)) == before_rows
    # The reasons are kept all the same, for each file.
    key = f"Output/rejected/{result.run_id}/skipped_files.csv"
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=key)["Body"].read().decode()
    assert [r["file_name"] for r in csv.DictReader(io.StringIO(body))] == [
        "nope.us.csv",
        "bxg.us.csv",
    ]


def test_oversized_file_is_refused_before_any_read(seeded_stack, s3_client, naming):
    big = b"Date,Open,High,Low,Close,Volume,OpenInt\n" + b"2020-01-01,1,1,1,1,1,0\n" * 50_000
    s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}two.us.csv", Body=big)
    result = run_job()
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert (
        "exceed the 1000000-byte limit: two.us.csv" in failures[0].event_specific_data.error.message
    )
    with pytest.raises(s3_client.exceptions.ClientError):
        s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)


def observe_raw_stock_files():
    """What the UI's "Observe" button runs: the source asset alone."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=DagsterInstance.ephemeral(), asset_selection=[AssetKey("raw_stock_files")]
    )


def test_the_pipeline_run_does_not_observe_or_list_the_source(seeded_stack):
    result = run_job()
    assert result.success
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]


def test_raw_stock_files_observation_reports_the_listing(seeded_stack):
    result = observe_raw_stock_files()
    [observation] = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    meta = {k: v.value for k, v in observation.metadata.items()}
    assert meta["files"] == len(sample_files())
    assert meta["empty_files"] == 1
    assert meta["total_bytes"] == sum(len(b) for _, b in sample_files())
