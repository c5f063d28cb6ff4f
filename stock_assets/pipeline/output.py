"""Writers for the output CSV (the spec's exact format) and the rejects files."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pv

from stock_assets.pipeline.transform import OUTPUT_COLUMNS, FileResult, RejectedRow

REJECTED_ROWS_HEADER = ["file_name", "line", "reason", "raw_row"]
SKIPPED_FILES_HEADER = ["file_name", "bytes", "reason"]


def output_csv_bytes(table: pa.Table) -> bytes:
    """The output table as CSV: no header, no index, no quoting, NULL as an empty field.

    Arrow writes it in C. Every value is already the final text (see `transform`), so no float
    formatting happens here. `quoting_style="none"` makes Arrow refuse a value that would need
    quotes rather than silently change the format.
    """
    if table.column_names != OUTPUT_COLUMNS:
        raise ValueError(f"columns {table.column_names} are not {OUTPUT_COLUMNS}")
    sink = io.BytesIO()
    pv.write_csv(
        table,
        sink,
        pv.WriteOptions(include_header=False, quoting_style="none", batch_size=65536),
    )
    return sink.getvalue()


def content_fingerprint(data: bytes) -> str:
    """A short, stable fingerprint of the CSV's bytes (shown in the UI, used as data version)."""
    return hashlib.sha256(data).hexdigest()[:16]


def _csv_text(header: list[str], rows: Iterable[list[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def rejected_rows_csv(rows: Iterable[RejectedRow]) -> bytes:
    return _csv_text(REJECTED_ROWS_HEADER, ([r.file_name, r.line, r.reason, r.raw] for r in rows))


def skipped_files_csv(files: Iterable[FileResult]) -> bytes:
    return _csv_text(
        SKIPPED_FILES_HEADER, ([f.file_name, f.bytes_read, f.skip_reason] for f in files)
    )


def csv_lines(body: bytes, chunk_bytes: int = 4 << 20) -> Iterator[bytes]:
    """Each complete line of `body` without its newline: `body.split(b"\\n")[:-1]`, lazily.

    Splitting a 175 MB CSV at once makes two million bytes objects (~250 MB) just to hash them;
    this splits a few MB at a time, and the lines are chained in C, not yielded one by one.
    """

    def chunks() -> Iterator[list[bytes]]:
        start, end_of_lines = 0, body.rfind(b"\n") + 1
        while start < end_of_lines:
            end = body.rfind(b"\n", start, min(start + chunk_bytes, end_of_lines)) + 1
            if end <= start:  # one line longer than a chunk
                end = body.find(b"\n", start) + 1
            yield body[start : end - 1].split(b"\n")
            start = end

    return itertools.chain.from_iterable(chunks())
