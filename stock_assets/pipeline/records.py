"""The data model every transform module shares: one input file's result and its rejected rows.

Kept apart from the code that fills them so the validation path, the fast path, the batching and
the combining can all import it without importing each other. Every data row a file holds ends up
either in its output table or in its rejects; combining then moves a later file's rows for dates
an earlier file of the same company supplied into the rejects too (`combine`), so the run's
totals always reconcile: `rows_read = rows_written + rows_rejected`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from stock_assets.pipeline.companies import company_name


@dataclass(frozen=True)
class RejectedRow:
    file_name: str
    line: int
    reason: str
    raw: str


@dataclass
class FileResult:
    """What one input file contributed: output rows, rejected rows, or a reason it was skipped."""

    file_name: str
    bytes_read: int
    rows_read: int = 0
    table: pa.Table | None = None
    rejected: list[RejectedRow] = field(default_factory=list)
    skip_reason: str | None = None
    open_zero_rows: int = 0
    # Rows of `table` once it was released (written out and no longer needed in memory).
    rows_released: int = 0

    @property
    def rows_written(self) -> int:
        return self.rows_released if self.table is None else self.table.num_rows

    def release_table(self) -> None:
        """Drop the output rows (already written elsewhere), keeping their count."""
        self.rows_released, self.table = self.rows_written, None

    @property
    def company(self) -> str:
        return company_name(self.file_name)
