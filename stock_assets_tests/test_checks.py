"""Asset checks against crafted bad inputs, on the real local stack.

Each case runs the real job; it asserts which checks pass, warn or fail, the run's outcome, the
rejects kept with reasons, and that the table is unchanged whenever a blocking check failed.
"""

import csv
import io
from datetime import date, timedelta

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance

from stock_assets.definitions import defs
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, STOCKS_PREFIX
from stock_assets_tests.conftest import SAMPLE_STOCKS, table_rows
from stock_assets_tests.test_pipeline import metadata, run_job

HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"


def checks(result) -> dict[str, tuple[bool, AssetCheckSeverity, dict]]:
    return {
        e.check_name: (e.passed, e.severity, {k: v.value for k, v in e.metadata.items()})
        for e in result.get_asset_check_evaluations()
    }


def put_stock(s3_client, naming, name: str, body: bytes) -> None:
    s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}{name}", Body=body)


def rejected_rows(s3_client, naming, run_id: str) -> list[dict]:
    key = f"Output/rejected/{run_id}/rejected_rows.csv"
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=key)["Body"].read().decode()
    return list(csv.DictReader(io.StringIO(body)))


@pytest.fixture
def loaded(seeded_stack, db, s3_client, naming):
    """A first good run, so later failures can be checked against an existing table and CSV."""
    first = run_job()
    assert first.success
    output = s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()
    return sorted(table_rows(db)), output


def assert_untouched(loaded, db, s3_client, naming) -> None:
    rows, output = loaded
    assert sorted(table_rows(db)) == rows
    current = s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()
    assert current == output


def test_real_sample_passes_every_blocking_check_and_warns_on_real_defects(seeded_stack):
    result = run_job()
    assert result.success
    found = checks(result)
    blocking = [
        "filter_file_valid", "input_limits", "files_reconcile", "rows_reconcile",
        "no_duplicate_keys", "formats_valid", "table_matches_csv", "table_no_duplicate_keys",
    ]  # fmt: skip
    assert all(found[name][0] for name in blocking), {n: found[n] for n in blocking}
    assert found["rejected_rows"][0]
    # Warnings name the real defects: blj's Open = 0 row, the decimal-shift rows, bxg empty.
    assert found["open_zero_rows"][:2] == (False, AssetCheckSeverity.WARN)
    assert found["open_zero_rows"][2]["count"] == 1
    assert "blj" in found["open_zero_rows"][2]["examples"]
    ohlc = found["ohlc_consistency"]
    assert ohlc[:2] == (False, AssetCheckSeverity.WARN) and ohlc[2]["count"] >= 2
    assert "hcn_i" in ohlc[2]["examples"] and "two" in ohlc[2]["examples"]
    skipped = found["skipped_files"]
    assert skipped[2]["count"] == 1 and "bxg.us.csv" in skipped[2]["examples"]
    assert found["zero_volume"][2]["count"] > 0


def test_duplicate_bad_date_and_non_numeric_rows_warn_and_are_kept_with_reasons(
    seeded_stack, s3_client, naming, db
):
    good = (SAMPLE_STOCKS / "two.us.csv").read_bytes()
    first_row = good.splitlines()[1]
    bad = good + first_row + b"\n2011-02-30,1,1,1,1,1,0\n2011-03-01,x,1,1,1,1,0\n"
    put_stock(s3_client, naming, "two.us.csv", bad)
    result = run_job()
    assert result.success  # a few bad rows are reported, not fatal
    found = checks(result)
    passed, severity, meta = found["rejected_rows"]
    assert (passed, severity, meta["count"]) == (False, AssetCheckSeverity.WARN, 3)
    assert (
        found["no_duplicate_keys"][0]
        and found["no_duplicate_keys"][2]["duplicates_rejected_upstream"] == 1
    )
    reasons = sorted(
        r["reason"].split(":")[0] for r in rejected_rows(s3_client, naming, result.run_id)
    )
    assert reasons == [
        "Date is not a valid ISO date (YYYY-MM-DD)",
        "Open is not a non-negative decimal number",
        "duplicate (company_name, stock_date)",
    ]
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM historical_stocks_data WHERE company_name = 'two'")
        assert cur.fetchone()[0] == len(good.splitlines()) - 1


def test_too_many_rejected_rows_block_the_load(loaded, s3_client, naming, db):
    garbage = HEADER + b"".join(b"2011-01-%02d,?,1,1,1,1,0\n" % d for d in range(1, 29)) * 20
    put_stock(s3_client, naming, "flhk.us.csv", garbage)
    result = run_job()
    assert not result.success
    passed, severity, meta = checks(result)["rejected_rows"]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert meta["count"] == 560
    assert len(rejected_rows(s3_client, naming, result.run_id)) == 560
    assert_untouched(loaded, db, s3_client, naming)


def test_wrong_header_file_is_skipped_with_a_warning(seeded_stack, s3_client, naming):
    put_stock(s3_client, naming, "ccv-cl.us.csv", b"when,price\n2017-11-10,25.3\n")
    result = run_job()
    assert result.success
    passed, severity, meta = checks(result)["skipped_files"]
    assert (passed, severity, meta["count"]) == (False, AssetCheckSeverity.WARN, 2)
    assert "ccv-cl.us.csv: header is 'when,price'" in meta["examples"]


def test_a_header_echoed_into_the_ui_stays_text(seeded_stack, s3_client, naming):
    """A skipped file's reason quotes its header, which whoever writes Stocks/ controls: in the
    UI's Markdown it must not become a link (or an image, HTML, a table cell)."""
    put_stock(s3_client, naming, "ccv-cl.us.csv", b"[Open the fix guide](https://evil.example)\n")
    result = run_job()
    assert result.success
    examples = checks(result)["skipped_files"][2]["examples"]
    table = metadata(result, "historical_stock_data_csv")["skipped_files"]
    for shown in (examples, table):
        assert "\\[Open the fix guide\\](https\\://evil.example)" in shown
        assert "[Open the fix guide](" not in shown.replace("\\[", "").replace("\\]", "")
        assert "https://" not in shown  # GitHub-flavoured Markdown links a bare URL too


def test_file_over_the_size_limit_fails_before_any_work(loaded, s3_client, naming, db):
    put_stock(s3_client, naming, "tmusp.us.csv", HEADER + b"2020-01-01,1,1,1,1,1,0\n" * 45_000)
    result = run_job()
    assert not result.success
    passed, severity, meta = checks(result)["input_limits"]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert "tmusp.us.csv" in meta["problem"]
    assert [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert_untouched(loaded, db, s3_client, naming)


def test_both_input_limits_are_configurable_in_the_runs_settings(seeded_stack, s3_client, naming):
    # SPEC 5: "at most 1,000 files, each under 1 MB (both limits configurable)".
    days = (date(1900, 1, 1) + timedelta(days=i) for i in range(45_000))
    big = HEADER + b"".join(b"%s,1,1,1,1,1,0\n" % d.isoformat().encode() for d in days)
    assert len(big) > 1_000_000
    put_stock(s3_client, naming, "tmusp.us.csv", big)
    job = defs.resolve_job_def("stock_pipeline_job")

    def run(**settings):
        return job.execute_in_process(
            run_config={"resources": {"settings": {"config": settings}}},
            instance=DagsterInstance.ephemeral(), raise_on_error=False,
        )  # fmt: skip

    raised = run(max_file_bytes=2_000_000)
    assert raised.success
    passed, _, meta = checks(raised)["input_limits"]
    assert passed and meta["max_file_bytes"] == 2_000_000 and meta["largest_bytes"] == len(big)
    lowered = run(max_files=3)  # the sample's filter names 7 files
    assert not lowered.success
    passed, severity, meta = checks(lowered)["filter_file_valid"]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert "limit is 3" in meta["problem"]


@pytest.mark.parametrize(
    ("filter_body", "problem"),
    [
        (b"", "names no files"),
        (b"   \n ", "names no files"),
        (", ".join(f"'f{i}.us.csv'" for i in range(1001)).encode(), "limit is 1000"),
    ],
    ids=["blank", "whitespace", "1001-entries"],
)
def test_bad_filter_file_fails_the_filter_check_and_leaves_everything(
    loaded, s3_client, naming, db, filter_body, problem
):
    s3_client.put_object(Bucket=naming.source_bucket, Key=FILTER_KEY, Body=filter_body)
    result = run_job()
    assert not result.success
    passed, severity, meta = checks(result)["filter_file_valid"]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert problem in meta["problem"]
    assert_untouched(loaded, db, s3_client, naming)


def test_unusable_filter_entries_warn_and_the_rest_is_loaded(seeded_stack, s3_client, naming, db):
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=FILTER_KEY)["Body"].read()
    s3_client.put_object(
        Bucket=naming.source_bucket, Key=FILTER_KEY, Body=body.rstrip() + b", 'msft.us.txt'"
    )
    result = run_job()
    assert result.success  # a typo in the filter does not stop the run ...
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "filter_file_valid"
    ]
    # ... but it is not silent: a warning naming the dropped entry, shown in the UI and email.
    assert (evaluation.passed, evaluation.severity) == (False, AssetCheckSeverity.WARN)
    assert "'msft.us.txt': not a .csv file name" in evaluation.description
    assert evaluation.metadata["invalid_entries"].value == 1
    assert len(table_rows(db)) > 0


def test_tampered_csv_object_fails_the_table_check_and_rolls_back(loaded, s3_client, naming, db):
    head = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    body = loaded[1].replace(b",tmusp\n", b",tmusq\n", 1)
    s3_client.put_object(
        Bucket=naming.source_bucket, Key=OUTPUT_KEY, Body=body, Metadata=head["Metadata"]
    )
    result = run_job(["historical_stocks_data"])
    assert not result.success
    passed, severity, meta = checks(result)["table_matches_csv"]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert "content changed" in meta["problem"]
    # The problem is the failure's description too: the UI and the run's email show it.
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "table_matches_csv"
    ]
    assert "content changed" in evaluation.description
    assert sorted(table_rows(db)) == loaded[0]


def test_deep_table_check_counts_duplicates_in_the_table(seeded_stack, db):
    from stock_assets.pipeline.load import check_no_duplicate_keys

    assert run_job().success
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO historical_stocks_data SELECT * FROM historical_stocks_data LIMIT 2"
        )
        outcome = check_no_duplicate_keys(None)(cur, "historical_stocks_data")
    assert not outcome.passed and len(outcome.metadata["examples"]) == 2


def test_table_has_a_freshness_policy_of_about_a_day():
    spec = defs.resolve_asset_graph().get(AssetKey("historical_stocks_data"))
    assert spec.freshness_policy.warn_window.to_timedelta().total_seconds() == 26 * 3600
