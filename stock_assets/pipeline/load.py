"""Load the output CSV into PostgreSQL: one transaction, COPY, checks before COMMIT.

Dagster-free: takes a psycopg2 connection and a readable byte stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Any

from psycopg2 import sql

from stock_assets.settings import TABLE_NAME

COPY_BUFFER_BYTES = 1 << 20


class LoadCheckFailed(RuntimeError):
    """A check inside the load transaction failed; the transaction was rolled back."""


@dataclass
class LoadResult:
    table: str
    rows_before: int
    rows_loaded: int
    seconds: float
    checks: dict[str, Any] = field(default_factory=dict)


def read_sql(name: str) -> str:
    return resources.files("stock_assets.pipeline").joinpath("sql", name).read_text()


def _statements(name: str, table: str) -> list[sql.Composed]:
    """The statements of a packaged .sql file, with `{table}` quoted as an identifier."""
    text = "\n".join(
        line for line in read_sql(name).splitlines() if not line.lstrip().startswith("--")
    )
    return [
        sql.SQL(part.strip()).format(table=sql.Identifier(table))
        for part in text.split(";")
        if part.strip()
    ]


def ensure_table(conn: Any, table: str = TABLE_NAME) -> None:
    with conn.cursor() as cur:
        for statement in _statements("create_table.sql", table):
            cur.execute(statement)


def count_rows(cursor: Any, table: str) -> int:
    cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return int(cursor.fetchone()[0])


# A check runs inside the transaction after the COPY: it returns metadata, or raises
# LoadCheckFailed to roll everything back.
InTransactionCheck = Callable[[Any, str], dict[str, Any]]


def check_row_count(expected_rows: int) -> InTransactionCheck:
    def check(cursor: Any, table: str) -> dict[str, Any]:
        actual = count_rows(cursor, table)
        if actual != expected_rows:
            raise LoadCheckFailed(
                f"table would hold {actual} rows but the CSV has {expected_rows}; rolled back"
            )
        return {"row_count_matches_csv": True, "rows": actual}

    return check


def load_csv(
    conn: Any,
    csv_stream: IO[bytes],
    checks: list[InTransactionCheck] | None = None,
    table: str = TABLE_NAME,
    lock_timeout: str = "60s",
) -> LoadResult:
    """Replace the table's rows with the CSV's (runs `insert_query.sql`), atomically.

    The table is created if missing (in its own transaction, so a failed load never drops it).
    Then TRUNCATE + COPY + `checks` run in one transaction; any exception rolls it back and
    re-raises, leaving the table exactly as it was.
    """
    started = time.perf_counter()
    ensure_table(conn, table)
    conn.commit()
    truncate, copy = _statements("insert_query.sql", table)
    results: dict[str, Any] = {}
    try:
        with conn.cursor() as cur:
            # Fail clearly instead of waiting forever behind another session's lock.
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
            rows_before = count_rows(cur, table)
            cur.execute(truncate)
            cur.copy_expert(copy, csv_stream, size=COPY_BUFFER_BYTES)
            rows_loaded = cur.rowcount
            for check in checks or []:
                results.update(check(cur, table))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return LoadResult(table, rows_before, rows_loaded, time.perf_counter() - started, results)


def preview_rows(conn: Any, limit: int = 5, table: str = TABLE_NAME) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT %s").format(sql.Identifier(table)), (limit,))
        return cur.fetchall()
