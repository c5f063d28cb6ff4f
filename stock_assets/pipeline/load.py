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

from stock_assets.pipeline.quality import ChecksummingReader, table_checksum_sql
from stock_assets.settings import TABLE_NAME

COPY_BUFFER_BYTES = 1 << 20


@dataclass
class CheckOutcome:
    """One check run inside the load transaction."""

    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


class LoadCheckFailed(RuntimeError):
    """A check inside the load transaction failed; the transaction was rolled back."""

    def __init__(self, outcomes: list[CheckOutcome]) -> None:
        self.outcomes = outcomes
        failed = [o for o in outcomes if not o.passed]
        details = "; ".join(f"{o.name}: {o.metadata.get('problem', 'failed')}" for o in failed)
        super().__init__(f"load rolled back, table unchanged: {details}")


@dataclass
class LoadResult:
    table: str
    rows_before: int
    rows_loaded: int
    seconds: float
    checks: list[CheckOutcome] = field(default_factory=list)


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


# A check runs inside the transaction after the COPY and says whether COMMIT may happen.
InTransactionCheck = Callable[[Any, str], CheckOutcome]


def check_table_matches_csv(
    expected_rows: int, expected_crc32: int | None, reader: ChecksummingReader
) -> InTransactionCheck:
    """The table holds exactly the CSV's lines: same count, same content checksum.

    Three numbers must agree: the checksum the CSV asset recorded when it wrote the object
    (`expected_crc32`), the checksum of the bytes actually streamed into COPY, and the one the
    server computes over the table's rows.
    """

    def check(cursor: Any, table: str) -> CheckOutcome:
        rows = count_rows(cursor, table)
        algorithm = reader.server_algorithm
        cursor.execute(sql.SQL(table_checksum_sql(algorithm)).format(table=sql.Identifier(table)))
        table_checksum = int(cursor.fetchone()[0])
        streamed = reader.checksums
        metadata: dict[str, Any] = {
            "table_rows": rows,
            "csv_rows": expected_rows,
            "csv_lines_streamed": reader.lines,
            "checksum_algorithm": algorithm,
            "table_checksum": str(table_checksum),
            "streamed_checksum": str(streamed[algorithm]),
            "csv_checksum_crc32": str(expected_crc32),
        }
        if rows != expected_rows or reader.lines != expected_rows:
            metadata["problem"] = f"table would hold {rows} rows, the CSV has {expected_rows}"
        elif expected_crc32 is not None and streamed["crc32"] != expected_crc32:
            metadata["problem"] = "the CSV object's content changed since the CSV asset wrote it"
        elif table_checksum != streamed[algorithm]:
            metadata["problem"] = "content checksum of the table differs from the CSV's"
        return CheckOutcome("table_matches_csv", "problem" not in metadata, metadata)

    return check


def check_no_duplicate_keys(csv_duplicates: int | None, deep: bool = False) -> InTransactionCheck:
    """No (company_name, stock_date) twice in the table.

    The table holds exactly the CSV's lines (table_matches_csv), so it has duplicates iff the CSV
    has; the CSV asset counted those (`csv_duplicates`). `deep` (or an unknown CSV count) makes
    the server count them itself, at the cost of a GROUP BY over the whole table.
    """

    def check(cursor: Any, table: str) -> CheckOutcome:
        if csv_duplicates is not None and not deep:
            passed = csv_duplicates == 0
            metadata: dict[str, Any] = {"duplicates": csv_duplicates, "method": "proved from CSV"}
        else:
            cursor.execute(
                sql.SQL(
                    "SELECT company_name, stock_date, count(*) FROM {} "
                    "GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 3 DESC LIMIT 5"
                ).format(sql.Identifier(table))
            )
            examples = cursor.fetchall()
            passed = not examples
            metadata = {"method": "counted in the table", "examples": [list(r) for r in examples]}
        if not passed:
            metadata["problem"] = "duplicate (company_name, stock_date) rows"
        return CheckOutcome("table_no_duplicate_keys", passed, metadata)

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
    outcomes: list[CheckOutcome] = []
    try:
        with conn.cursor() as cur:
            # Fail clearly instead of waiting forever behind another session's lock.
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
            rows_before = count_rows(cur, table)
            cur.execute(truncate)
            cur.copy_expert(copy, csv_stream, size=COPY_BUFFER_BYTES)
            rows_loaded = cur.rowcount
            outcomes = [check(cur, table) for check in checks or []]
            if not all(o.passed for o in outcomes):
                raise LoadCheckFailed(outcomes)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return LoadResult(table, rows_before, rows_loaded, time.perf_counter() - started, outcomes)


def preview_rows(conn: Any, limit: int = 5, table: str = TABLE_NAME) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT %s").format(sql.Identifier(table)), (limit,))
        return cur.fetchall()
