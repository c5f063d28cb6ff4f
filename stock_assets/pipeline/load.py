"""Load the output CSV into PostgreSQL: one transaction, COPY, checks before COMMIT.

Dagster-free: takes a psycopg2 connection and a readable byte stream.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg2
from psycopg2 import sql

from stock_assets.pipeline.ledger import LoadRecord, ensure_ledger, record_load
from stock_assets.pipeline.quality import (
    ChecksummingReader,
    checksum_algorithm,
    table_checksum_sql,
)
from stock_assets.pipeline.sql_files import statements
from stock_assets.pipeline.verdicts import Verdict
from stock_assets.settings import TABLE_NAME

COPY_BUFFER_BYTES = 1 << 20


class LoadCheckFailed(RuntimeError):
    """A check inside the load transaction failed; the transaction was rolled back."""

    def __init__(self, outcomes: list[Verdict]) -> None:
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
    checks: list[Verdict] = field(default_factory=list)
    load_id: int | None = None  # its row in the ledger (pipeline_loads)


def ensure_table(conn: Any, table: str = TABLE_NAME) -> None:
    """The course's table and the load ledger, if missing."""
    with conn.cursor() as cur:
        create_table(cur, table)
        ensure_ledger(cur)


def create_table(cursor: Any, table: str) -> None:
    """The course's table (`create_table.sql`), if missing, in `cursor`'s transaction."""
    for statement in statements("create_table.sql", table=table):
        cursor.execute(statement)


def count_rows(cursor: Any, table: str) -> int:
    cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return int(cursor.fetchone()[0])


# A check runs inside the transaction after the COPY and says whether COMMIT may happen.
InTransactionCheck = Callable[[Any, str], Verdict]


def check_table_matches_csv(
    expected_rows: int, expected_crc32: int | None, reader: ChecksummingReader
) -> InTransactionCheck:
    """The table holds exactly the CSV's lines: same count, same content checksum.

    Three numbers must agree: the checksum the CSV asset recorded when it wrote the object
    (`expected_crc32`), the checksum of the bytes actually streamed into COPY, and the one the
    server computes over the table's rows.
    """

    def check(cursor: Any, table: str) -> Verdict:
        algorithm = reader.server_algorithm
        encoding = cursor.connection.get_parameter_status("server_encoding")
        query = table_checksum_sql(algorithm, encoding)
        cursor.execute(sql.SQL(query).format(table=sql.Identifier(table)))
        rows, table_checksum = (int(value) for value in cursor.fetchone())
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
            metadata["problem"] = (
                f"table would hold {rows} rows from {reader.lines} lines streamed; "
                f"the CSV has {expected_rows}"
            )
        elif expected_crc32 is not None and streamed["crc32"] != expected_crc32:
            metadata["problem"] = "the CSV object's content changed since the CSV asset wrote it"
        elif table_checksum != streamed[algorithm]:
            metadata["problem"] = "content checksum of the table differs from the CSV's"
        return Verdict("table_matches_csv", "problem" not in metadata, metadata)

    return check


def check_no_duplicate_keys(csv_duplicates: int | None, deep: bool = False) -> InTransactionCheck:
    """No (company_name, stock_date) twice in the table.

    The table holds exactly the CSV's lines (table_matches_csv), so it has duplicates iff the CSV
    has; the CSV asset counted those (`csv_duplicates`). `deep` (or an unknown CSV count) makes
    the server count them itself, at the cost of a GROUP BY over the whole table.
    """

    def check(cursor: Any, table: str) -> Verdict:
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
        return Verdict("table_no_duplicate_keys", passed, metadata)

    return check


class TableLoad:
    """One replacement of the table's rows, as a context manager around one transaction.

    Entering makes sure the load ledger exists (committed: empty, it shows nothing), then opens
    the load's transaction: lock timeout, the table created if missing (so a failed first load
    leaves none, as it found none), TRUNCATE. `copy` streams CSV into it,
    `check` runs in-transaction checks, `commit` makes it visible. Leaving the block without
    `commit` — an exception, a failed check, a failure elsewhere in the caller — rolls back, so
    the table is exactly as it was.
    """

    def __init__(self, conn: Any, table: str = TABLE_NAME, lock_timeout: str = "60s") -> None:
        self.conn = conn
        self.table = table
        self.lock_timeout = lock_timeout
        self.rows_before = 0
        self.rows_loaded = 0
        self.outcomes: list[Verdict] = []
        self._cursor: Any = None
        self._committed = False
        self._started = 0.0
        self.load_id: int | None = None

    def __enter__(self) -> TableLoad:
        self._started = time.perf_counter()
        with self.conn.cursor() as cursor:
            ensure_ledger(cursor)
        self.conn.commit()
        truncate, self._copy_sql = statements("insert_query.sql", table=self.table)
        self._cursor = self.conn.cursor()
        # Fail clearly instead of waiting forever behind another session's lock.
        self.set_local("lock_timeout", self.lock_timeout)
        # Two first loads would both create the table, and the second fail on the first's
        # catalog row once it commits: the second waits here instead, then finds it.
        self._cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        create_table(self._cursor, self.table)
        self.rows_before = count_rows(self._cursor, self.table)
        self._cursor.execute(truncate)
        return self

    def set_local(self, setting: str, value: str) -> None:
        """A server setting for the rest of this transaction only (`SET LOCAL`)."""
        self._cursor.execute("SELECT set_config(%s, %s, true)", (setting, value))

    def copy(self, csv_stream: IO[bytes]) -> int:
        """COPY `csv_stream` (read until empty) into the table; returns the rows it added."""
        self._cursor.copy_expert(self._copy_sql, csv_stream, size=COPY_BUFFER_BYTES)
        self.rows_loaded += self._cursor.rowcount
        return self._cursor.rowcount

    def check(self, checks: list[InTransactionCheck]) -> list[Verdict]:
        """Run `checks` in the transaction; raises LoadCheckFailed (all outcomes so far) if any
        fails, which leaves COMMIT impossible."""
        self.outcomes += [check(self._cursor, self.table) for check in checks]
        self._raise_if_a_check_failed()
        return self.outcomes

    def _raise_if_a_check_failed(self) -> None:
        if not all(o.passed for o in self.outcomes):
            raise LoadCheckFailed(self.outcomes)

    def commit(self, record: LoadRecord | None = None) -> LoadResult:
        """COMMIT, with the typed view and the ledger row (`record`) in the same transaction."""
        self._raise_if_a_check_failed()  # also for a caller that caught LoadCheckFailed
        self.load_id = record_load(self._cursor, self.table, self.rows_loaded, record)
        self.conn.commit()
        self._committed = True
        seconds = time.perf_counter() - self._started
        return LoadResult(
            self.table, self.rows_before, self.rows_loaded, seconds, self.outcomes, self.load_id
        )

    def __exit__(self, *exc_info: object) -> None:
        self._cursor.close()
        if self._committed:
            return
        try:
            self.conn.rollback()
        except psycopg2.Error:
            if exc_info[0] is None:  # else the original error says more (e.g. connection lost)
                raise


def load_csv(
    conn: Any,
    csv_stream: IO[bytes],
    checks: list[InTransactionCheck] | None = None,
    table: str = TABLE_NAME,
    lock_timeout: str = "60s",
    record: LoadRecord | None = None,
) -> LoadResult:
    """Replace the table's rows with the CSV's (runs `insert_query.sql`), atomically: TRUNCATE +
    COPY + `checks` in one transaction; any exception rolls it back and re-raises."""
    with TableLoad(conn, table, lock_timeout) as load:
        load.copy(csv_stream)
        load.check(checks or [])
        return load.commit(record)


class BackgroundCopy:
    """A COPY (`run`, given a file object to read) in a worker thread, fed chunk by chunk from
    the caller's thread.

    The producer (the transformation) calls `write` for each chunk of CSV as it is made and
    `finish` at the end; meanwhile the worker streams the chunks to the server. The queue is
    bounded, so a slow server slows the producer down rather than filling memory. If the worker
    fails, `write` stops queueing (the producer carries on with its own work) and `finish`
    raises the worker's error.
    """

    def __init__(self, run: Callable[[IO[bytes]], int], max_chunks: int = 8) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=max_chunks)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy")
        self._future: Future[int] = self._pool.submit(run, _QueueReader(self._queue))

    def write(self, chunk: bytes) -> None:
        if chunk:
            self._put(chunk)

    def finish(self) -> int:
        """End of data: waits for the worker; returns its result or raises its error."""
        self._put(b"")
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=False)

    def abandon(self) -> None:
        """Stop feeding (the caller gave up): COPY ends and the worker exits. Harmless after
        `finish`."""
        self._put(b"")
        concurrent.futures.wait([self._future])
        self._pool.shutdown(wait=False)

    def _put(self, chunk: bytes) -> None:
        while not self._future.done():  # a failed worker reads nothing more: do not block on it
            try:
                self._queue.put(chunk, timeout=0.2)
                return
            except queue.Full:
                continue


class _QueueReader:
    """A file object whose `read` returns the next queued chunk; b"" is the end."""

    def __init__(self, chunks: queue.Queue[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return self._chunks.get()


class PipelinedLoad:
    """Loads the output into the table while the output is still being made; commits only when
    told, after the caller's own checks and writes have succeeded.

    Entering starts a worker that connects, opens the load's transaction (see `TableLoad`) and
    COPYs the chunks `write` hands it as they are produced (see `BackgroundCopy`); the caller
    does not wait for any of that. `finish` ends the COPY and starts the content check on the
    server in the background, so it overlaps whatever the caller does next (its checks on the
    CSV, the upload); `commit` waits for it, adds the duplicate-key check and commits. Leaving
    the block without `commit` rolls back.

    A failure on the table's side (connecting, the COPY) is kept and raised by `commit`, not
    before: the caller's other output (the CSV object) does not depend on the database.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Any]],
        table: str = TABLE_NAME,
        lock_timeout: str = "60s",
    ) -> None:
        self._connect = connect
        self._table = table
        self._lock_timeout = lock_timeout
        self._database = ExitStack()  # the connection and the transaction, opened by the worker
        self._copy: BackgroundCopy | None = None
        self._load: TableLoad | None = None
        self._reader: ChecksummingReader | None = None
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-check")
        self._checking: Future[list[Verdict]] | None = None
        self.error: BaseException | None = None
        self.connection: Any = None

    def __enter__(self) -> PipelinedLoad:
        self._copy = BackgroundCopy(self._open_and_copy)
        return self

    def _open_and_copy(self, chunks: IO[bytes]) -> int:
        conn = self.connection = self._database.enter_context(self._connect())
        self._load = self._database.enter_context(TableLoad(conn, self._table, self._lock_timeout))
        self._reader = ChecksummingReader(chunks, checksum_algorithm(conn.server_version))
        return self._load.copy(self._reader)

    def write(self, chunk: bytes) -> None:
        if self._copy is not None:
            self._copy.write(chunk)

    def finish(self, expected_rows: int) -> None:
        """All chunks written: end the COPY; check the table against the streamed CSV."""
        if self._copy is None:
            return
        try:
            self._copy.finish()
        except psycopg2.Error as err:
            self._fail(err)
            return
        assert self._load is not None and self._reader is not None
        matches = check_table_matches_csv(expected_rows, None, self._reader)
        self._checking = self._checker.submit(self._check_beside_upload, matches)

    def _check_beside_upload(self, check: InTransactionCheck) -> list[Verdict]:
        assert self._load is not None
        # One server process for the scan: it runs while the caller uploads the CSV, and
        # parallel workers would take the CPU the upload needs on a small host.
        self._load.set_local("max_parallel_workers_per_gather", "0")
        return self._load.check([check])

    @property
    def streamed_crc32(self) -> int | None:
        """The per-line CRC-32 sum of the bytes COPY consumed (None: no COPY completed)."""
        if self._checking is None or self._reader is None:
            return None
        return self._reader.checksums["crc32"]

    def commit(
        self, csv_duplicates: int | None, deep: bool = False, record: LoadRecord | None = None
    ) -> LoadResult:
        """Raise the table side's failure if there was one; else finish the checks and COMMIT."""
        if self.error is not None:
            raise self.error
        if self._checking is None or self._load is None:
            raise RuntimeError("PipelinedLoad.commit before finish")
        self._checking.result()  # raises LoadCheckFailed
        self._load.check([check_no_duplicate_keys(csv_duplicates, deep=deep)])
        return self._load.commit(record)

    def _fail(self, err: BaseException) -> None:
        self.error = err
        self._copy = None
        with contextlib.suppress(psycopg2.Error):
            self._database.close()  # roll back and disconnect now; nothing more goes there

    def __exit__(self, *exc_info: object) -> None:
        # The worker first (it may hold the connection in COPY), then the rollback unless
        # committed, then the connection.
        if self._copy is not None:
            self._copy.abandon()
        self._checker.shutdown(wait=True)
        self._database.__exit__(*exc_info)


def preview_rows(conn: Any, limit: int = 5, table: str = TABLE_NAME) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT %s").format(sql.Identifier(table)), (limit,))
        return cur.fetchall()
