"""The CSV's blocking checks fail, and stop the run, on the output defects they guard against.

Upstream validation rejects such rows before they reach the output, so a real run never makes
these checks fail: here the output is crafted, and the checks must still catch it."""

import pyarrow as pa

from stock_assets.pipeline.columns import OUTPUT_COLUMNS, OUTPUT_SCHEMA
from stock_assets.pipeline.combine import CombinedOutput
from stock_assets.pipeline.quality import OutputProfile
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.verdicts import csv_verdicts

GOOD = ["2020-01-02", "1.5", "2.0", "1.0", "1.75", "100", "16.666666666666664", "0.25", "abc"]


def output(*rows: list[str]) -> pa.Table:
    return pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(OUTPUT_COLUMNS)},
        schema=OUTPUT_SCHEMA,
    )


def verdicts_of(files: list[FileResult], files_selected: int) -> dict:
    profile = OutputProfile()
    for f in files:
        if f.table is not None:
            profile.add(f.table)
    combined = CombinedOutput(None, files, [], output())
    found, _ = csv_verdicts(combined, profile, files_selected, [], {}, 0.01)
    return {v.name: v for v in found}


def test_a_clean_output_passes_every_blocking_check():
    table = output(GOOD, ["2020-01-03", *GOOD[1:]])
    verdicts = verdicts_of([FileResult("abc.us.csv", 100, rows_read=2, table=table)], 1)
    assert not [name for name, v in verdicts.items() if v.stops_the_run]


def test_a_repeated_key_in_the_output_stops_the_run():
    table = output(GOOD, GOOD)  # the same (company_name, stock_date) twice
    verdicts = verdicts_of([FileResult("abc.us.csv", 100, rows_read=2, table=table)], 1)
    duplicates = verdicts["no_duplicate_keys"]
    assert duplicates.stops_the_run and duplicates.metadata["duplicates"] == 1


def test_a_malformed_value_in_the_output_stops_the_run():
    bad_date = ["2020-13-01", *GOOD[1:]]
    bad_volume = ["2020-01-03", *GOOD[1:5], "1.5", *GOOD[6:]]
    table = output(GOOD, bad_date, bad_volume)
    verdicts = verdicts_of([FileResult("abc.us.csv", 100, rows_read=3, table=table)], 1)
    formats = verdicts["formats_valid"]
    assert formats.stops_the_run
    assert set(formats.metadata["problems"]) == {"stock_date", "volume_traded"}


def test_counts_that_do_not_reconcile_stop_the_run():
    # A row read but neither written nor rejected; a selected file neither read nor skipped.
    table = output(GOOD)
    verdicts = verdicts_of([FileResult("abc.us.csv", 100, rows_read=2, table=table)], 2)
    assert verdicts["rows_reconcile"].stops_the_run
    assert verdicts["files_reconcile"].stops_the_run
