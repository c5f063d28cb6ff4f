"""The full 1,000-file real data set through stock_pipeline_job, once, with reconciliation."""

import pytest

from stock_assets.bucket_layout import ARCHIVE_NAME, FILTER_NAME
from stock_assets.local.seed import seed_source_bucket
from stock_assets_tests.conftest import REPO_ROOT, SHARED_DATA
from stock_assets_tests.test_pipeline import FIRST_LINE, metadata, output_lines, run_job

DATA_DIR = SHARED_DATA if (SHARED_DATA / ARCHIVE_NAME).exists() else REPO_ROOT / "data"
EMPTY_FILES = {"znwaa.us.csv", "sail.us.csv", "jt.us.csv", "stnl.us.csv", "bxg.us.csv"}


@pytest.mark.full
@pytest.mark.skipif(
    not (DATA_DIR / ARCHIVE_NAME).exists(), reason=f"no {ARCHIVE_NAME} in {DATA_DIR}"
)
def test_full_real_data_set_reconciles(clean_stack, s3_client, naming, db):
    seeded = seed_source_bucket(
        s3_client, naming, data_dir=DATA_DIR, filter_bytes=(DATA_DIR / FILTER_NAME).read_bytes()
    )
    assert seeded.files_uploaded == 1000
    result = run_job()
    assert result.success
    csv_meta = metadata(result, "historical_stock_data_csv")
    table_meta = metadata(result, "historical_stocks_data")
    with db.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT company_name) FROM historical_stocks_data")
        table_rows, companies = cur.fetchone()
    print(
        f"\nfull data set ({DATA_DIR}): files selected {csv_meta['stock_assets/files_selected']}, "
        f"skipped {csv_meta['stock_assets/files_skipped']}; rows read {csv_meta['stock_assets/rows_read']} = "
        f"table {table_rows} + rejected {csv_meta['stock_assets/rows_rejected']}; companies {companies}; "
        f"Open=0 rows {csv_meta['stock_assets/open_zero_rows']}; csv {csv_meta['duration_seconds']}s, "
        f"load {table_meta['load_seconds']}s"
    )
    assert csv_meta["stock_assets/rows_read"] == table_rows + csv_meta["stock_assets/rows_rejected"]
    assert csv_meta["reads_retried"] == 0
    assert table_rows == csv_meta["dagster/row_count"] == 2_054_899
    assert companies == 995
    skipped = {
        line.split(" |")[0].strip("| ") for line in csv_meta["skipped_files"].splitlines()[2:]
    }
    assert skipped == EMPTY_FILES
    assert csv_meta["stock_assets/open_zero_rows"] == 1
    assert output_lines(s3_client, naming)[0] == FIRST_LINE

    # Every blocking check passes; the warnings report the real data's known defects.
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = {n for n, e in found.items() if not e.passed}
    assert failed == {"open_zero_rows", "ohlc_consistency", "zero_volume", "skipped_files"}
    assert all(found[n].severity.value == "WARN" for n in failed)
    count = {n: found[n].metadata["count"].value for n in failed}
    print(f"warnings on the real data: {count}")
    assert count["open_zero_rows"] == 1 and count["skipped_files"] == 5
    assert count["ohlc_consistency"] == 11  # the decimal-shift rows
    assert count["zero_volume"] == 3908
