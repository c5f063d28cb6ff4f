"""What the people downstream get from a load: the typed view and the load ledger, on the real
local stack (moto, embedded PostgreSQL, a real Dagster run)."""

import math

from stock_assets.pipeline.ledger import LEDGER_TABLE, VIEW_COLUMNS, VIEW_NAME
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY
from stock_assets_tests.test_pipeline import metadata, output_lines, run_job


def query(db, statement: str, params: tuple = ()) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def test_the_typed_view_is_the_table_with_real_types(seeded_stack, s3_client, naming, db):
    result = run_job()
    assert result.success
    lines = output_lines(s3_client, naming)
    [(rows,)] = query(db, f"SELECT count(*) FROM {VIEW_NAME}")
    assert rows == len(lines) == len(query(db, "SELECT 1 FROM historical_stocks_data"))
    types = query(
        db,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (VIEW_NAME,),
    )
    assert types == [
        ("stock_date", "date"), ("open_value", "double precision"),
        ("high_value", "double precision"), ("low_value", "double precision"),
        ("close_value", "double precision"), ("volume_traded", "bigint"),
        ("daily_percent_change", "double precision"), ("value_change", "double precision"),
        ("company_name", "text"),
    ]  # fmt: skip
    # The table itself is the course's: the spec's nine columns in order, each VARCHAR(56) NULL.
    table = query(
        db,
        "SELECT column_name, data_type, character_maximum_length, is_nullable "
        "FROM information_schema.columns WHERE table_name = 'historical_stocks_data' "
        "ORDER BY ordinal_position",
    )
    assert table == [(name, "character varying", 56, "YES") for name, _ in types]
    # Numbers an analyst can add up: the view's sum is the CSV's.
    [(view_sum,)] = query(db, f"SELECT sum(value_change) FROM {VIEW_NAME}")
    csv_sum = math.fsum(float(line.split(",")[7]) for line in lines)
    assert math.isclose(view_sum, csv_sum, rel_tol=1e-9)
    # Open = 0 (blj, 2008-02-07): no percentage, NULL rather than inf or an empty string.
    [(open_value, percent)] = query(
        db,
        f"SELECT open_value, daily_percent_change FROM {VIEW_NAME} "
        "WHERE company_name = 'blj' AND stock_date = DATE '2008-02-07'",
    )
    assert open_value == 0.0 and percent is None
    # And in the table itself (the view's NULLIF would turn an empty string into NULL too).
    stored = query(
        db,
        "SELECT daily_percent_change IS NULL, daily_percent_change FROM historical_stocks_data "
        "WHERE company_name = 'blj' AND stock_date = '2008-02-07'",
    )
    assert stored == [(True, None)]
    # The view is an asset of its own, downstream of the table, with its schema.
    view = metadata(result, VIEW_NAME)
    assert view["dagster/row_count"] == rows
    assert [c.name for c in view["dagster/column_schema"].columns] == list(VIEW_COLUMNS)


def test_each_committed_load_adds_one_ledger_row_and_a_failed_one_none(
    seeded_stack, s3_client, naming, db
):
    first = run_job()
    assert first.success
    ledger = query(
        db,
        "SELECT run_id, triggered_by, rows_loaded, files_read, files_skipped, rows_rejected, "
        f"csv_version, started_at <= committed_at FROM {LEDGER_TABLE} ORDER BY load_id",
    )
    table = metadata(first, "historical_stocks_data")
    csv = metadata(first, "historical_stock_data_csv")
    head = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    assert ledger == [
        (
            first.run_id,
            "launched by hand (Dagster UI, GraphQL API or CLI)",
            table["dagster/row_count"],
            csv["stock_assets/files_read"],
            csv["stock_assets/files_skipped"],
            csv["stock_assets/rows_rejected"],
            head.get("VersionId") or head["ETag"].strip('"'),
            True,
        )
    ]
    assert table["stock_assets/load_id"] is not None
    # A failed run (the filter removed) leaves the ledger as it was.
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    assert not run_job().success
    assert len(query(db, f"SELECT 1 FROM {LEDGER_TABLE}")) == 1
