"""What a committed load leaves beside the course's table, in the same transaction: the typed
view for analysts (`historical_stocks`) and one row in the load ledger (`pipeline_loads`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2 import sql

from stock_assets.pipeline.sql_files import statements
from stock_assets.settings import TABLE_NAME

VIEW_NAME = "historical_stocks"
LEDGER_TABLE = "pipeline_loads"
# The view's columns and types, as PostgreSQL reports them (information_schema).
VIEW_COLUMNS = {
    "stock_date": "date",
    "open_value": "double precision",
    "high_value": "double precision",
    "low_value": "double precision",
    "close_value": "double precision",
    "volume_traded": "bigint",
    "daily_percent_change": "double precision",
    "value_change": "double precision",
    "company_name": "text",
}


@dataclass(frozen=True)
class LoadRecord:
    """The ledger row's facts that the load itself cannot know."""

    run_id: str
    triggered_by: str
    started_at: datetime
    files_read: int | None = None
    files_skipped: int | None = None
    rows_rejected: int | None = None
    content_checksum: str | None = None
    csv_version: str | None = None


def view_name(table: str) -> str:
    """`historical_stocks` over the course's table; `<table>_typed` over any other."""
    return VIEW_NAME if table == TABLE_NAME else f"{table}_typed"


def _replace_view(cursor: Any, table: str) -> None:
    for statement in statements("typed_view.sql", view=view_name(table), table=table):
        cursor.execute(statement)


def ensure_ledger(cursor: Any) -> None:
    for statement in statements("pipeline_loads.sql", ledger=LEDGER_TABLE):
        cursor.execute(statement)


def record_load(cursor: Any, table: str, rows_loaded: int, record: LoadRecord | None) -> int | None:
    """Inside the load's transaction, before COMMIT: (re)create the typed view over `table` and
    add the ledger row; returns the row's id (None: no record given, e.g. a load outside a run)."""
    _replace_view(cursor, table)
    if record is None:
        return None
    cursor.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, run_id, triggered_by, started_at, committed_at, "
            "rows_loaded, files_read, files_skipped, rows_rejected, content_checksum, "
            "csv_version) VALUES (%s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s) "
            "RETURNING load_id"
        ).format(sql.Identifier(LEDGER_TABLE)),
        (
            table, record.run_id, record.triggered_by, record.started_at, rows_loaded,
            record.files_read, record.files_skipped, record.rows_rejected,
            record.content_checksum, record.csv_version,
        ),
    )  # fmt: skip
    return int(cursor.fetchone()[0])


def create_view(conn: Any, table: str) -> None:
    """The typed view alone, over the table as it is (its own transaction)."""
    with conn.cursor() as cursor:
        _replace_view(cursor, table)
    conn.commit()
