"""Per-file results joined, in filter order, into the one output table.

The only rule that spans files lives here: a (company_name, stock_date) pair is written once.
Two files can share a company name (`abc.us.csv` and `abc.uk.csv`), so a later file's rows for
dates an earlier file already supplied become rejected rows instead of output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from stock_assets.pipeline.columns import OUTPUT_SCHEMA
from stock_assets.pipeline.companies import company_name
from stock_assets.pipeline.records import FileResult, RejectedRow

HEAD_ROWS = 5


@dataclass
class CombinedOutput:
    # The whole output; None when the combiner streamed it and kept only `head`.
    table: pa.Table | None
    files: list[FileResult]
    cross_file_duplicates: list[RejectedRow]
    head: pa.Table  # the first few output rows (a preview)

    @property
    def rows_written(self) -> int:
        return sum(f.rows_written for f in self.files)

    @property
    def files_read(self) -> int:
        return sum(1 for f in self.files if not f.skip_reason)

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_rejected(self) -> int:
        return sum(len(f.rejected) for f in self.files) + len(self.cross_file_duplicates)

    @property
    def rejected_rows(self) -> list[RejectedRow]:
        return [r for f in self.files for r in f.rejected] + self.cross_file_duplicates

    @property
    def skipped_files(self) -> list[FileResult]:
        return [f for f in self.files if f.skip_reason]


class OutputCombiner:
    """Joins file outputs one by one, in filter order, into the output table.

    Drops rows whose (company, date) an earlier file already supplied (two files can share a
    company name, e.g. `abc.us.csv` and `abc.uk.csv`); they become rejected rows. Works file by
    file so the output can be written and loaded while later files are still being read.
    `file_names` are all the files that will be added: only companies fed by more than one of
    them can collide, so only those companies' dates are tracked.
    """

    def __init__(self, file_names: Iterable[str], keep_tables: bool = True) -> None:
        counts = Counter(company_name(name) for name in file_names)
        self.shared_companies = {company for company, n in counts.items() if n > 1}
        self._dates_by_company: dict[str, set[str]] = {}
        self._files: list[FileResult] = []
        self._tables: list[pa.Table] = []
        self._cross: list[RejectedRow] = []
        self._keep_tables = keep_tables
        self._head = empty_output()

    def add(self, result: FileResult) -> pa.Table | None:
        """Take one file's result; returns the rows it adds to the output (None: none)."""
        self._files.append(result)
        if result.table is None or result.table.num_rows == 0:
            return None
        if result.company in self.shared_companies:
            result.table = self._drop_dates_seen(result)
        table = result.table
        if self._head.num_rows < HEAD_ROWS:
            self._head = pa.concat_tables([self._head, table.slice(0, HEAD_ROWS)])
        if self._keep_tables:
            self._tables.append(table)
        else:  # streamed: the caller writes the rows out; only their count stays here
            result.release_table()
        return table

    def _drop_dates_seen(self, result: FileResult) -> pa.Table:
        table = result.table
        assert table is not None
        dates = table["stock_date"].to_pylist()
        seen = self._dates_by_company.setdefault(result.company, set())
        keep = [d not in seen for d in dates]
        self._cross.extend(
            RejectedRow(
                result.file_name,
                0,
                f"duplicate (company_name, stock_date): {result.company} {d} "
                "already supplied by an earlier file",
                d,
            )
            for d, kept in zip(dates, keep, strict=True)
            if not kept
        )
        seen.update(dates)
        return table if all(keep) else table.filter(pa.array(keep))

    def result(self) -> CombinedOutput:
        table = None
        if self._keep_tables:
            table = pa.concat_tables(self._tables) if self._tables else empty_output()
        head = self._head.slice(0, HEAD_ROWS).combine_chunks()
        return CombinedOutput(table, self._files, self._cross, head)


def combine(results: Iterable[FileResult]) -> CombinedOutput:
    """All file outputs joined in filter order (see `OutputCombiner`)."""
    files = list(results)
    combiner = OutputCombiner(f.file_name for f in files)
    for f in files:
        combiner.add(f)
    return combiner.result()


def empty_output() -> pa.Table:
    # Not `OUTPUT_SCHEMA.empty_table()`: that imports pandas in every run (see run.py's
    # `_settle_pyarrow_pandas_check`).
    return pa.Table.from_batches([], schema=OUTPUT_SCHEMA)
