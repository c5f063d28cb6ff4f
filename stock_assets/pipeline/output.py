"""Writers for the output CSV (the spec's exact format) and the rejects files."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.pipeline.columns import OUTPUT_COLUMNS
from stock_assets.pipeline.combine import CombinedOutput, OutputCombiner
from stock_assets.pipeline.quality import OutputProfile, line_checksum
from stock_assets.pipeline.records import FileResult, RejectedRow
from stock_assets.pipeline.transform import transform_files

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
    # An Arrow buffer, not a Python file object: Arrow then writes without calling back into
    # Python (and taking the GIL) for every block.
    sink = pa.BufferOutputStream()
    pv.write_csv(
        table,
        sink,
        pv.WriteOptions(include_header=False, quoting_style="none", batch_size=65536),
    )
    return sink.getvalue().to_pybytes()


class CsvOutput:
    """The output CSV assembled batch by batch, in order, while the input is still being read.

    Each batch of output rows becomes spec-format bytes (`output_csv_bytes`, about
    `rows_per_chunk` rows at a time), spooled to a temporary file (the whole CSV is uploaded
    from there: held in memory, it would double the run's footprint), added to the SHA-256
    fingerprint, and handed to
    `forward` as soon as it exists, so a COPY into the table can run alongside the
    transformation instead of after it. `line_checksums`: also sum each line's CRC-32 (the
    content checksum the table is checked against) when nothing downstream computes it.
    `on_batch` sees each chunk's rows as an Arrow table (for checks made on the way).
    """

    def __init__(
        self,
        forward: Callable[[bytes], None] | None = None,
        rows_per_chunk: int = 100_000,
        line_checksums: bool = False,
        on_batch: Callable[[pa.Table], object] | None = None,
    ) -> None:
        self._forward = forward
        self._on_batch = on_batch
        self._rows_per_chunk = rows_per_chunk
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115  closed with this object
        self._sha256 = hashlib.sha256()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.size = 0
        self.crc32: int | None = 0 if line_checksums else None

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._rows_per_chunk:
            self._flush()

    def close(self) -> None:
        """Write what is pending; call once the last batch was added."""
        self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        batch = pa.concat_tables(self._pending)
        if self._on_batch is not None:
            self._on_batch(batch)
        chunk = output_csv_bytes(batch)
        self.rows += self._pending_rows
        self._pending, self._pending_rows = [], 0
        self._spool.write(chunk)
        self.size += len(chunk)
        self._sha256.update(chunk)
        if self.crc32 is not None:
            self.crc32 += line_checksum(chunk[:-1].split(b"\n"))  # a chunk is whole lines
        if self._forward is not None:
            self._forward(chunk)

    @property
    def fingerprint(self) -> str:
        """`content_fingerprint` of the bytes written so far."""
        return short_digest(self._sha256)

    def body(self) -> IO[bytes]:
        """The whole CSV as a file object at its start, for an upload (seekable, so botocore
        knows its length and can rewind it for a retry)."""
        self._spool.flush()
        self._spool.seek(0)
        return self._spool

    def getvalue(self) -> bytes:
        """The whole CSV, read back from the spool."""
        return self.body().read()


def build_output(
    files: Iterable[tuple[str, bytes]],
    file_names: Sequence[str],
    forward: Callable[[bytes], None] | None = None,
    on_rows: Callable[[str, pa.Table], object] | None = None,
) -> tuple[CombinedOutput, CsvOutput, OutputProfile]:
    """Raw files (name, bytes), in filter order → the combined output, its CSV and its profile.

    One pass over the files, in order: the downloads run ahead in a thread pool, each batch is
    transformed on a worker thread while the next batch is gathered (`transform_files`), and
    each CSV chunk goes to `forward` as soon as it is written (see `CsvOutput`). The row-level
    checks (`OutputProfile`) run on a worker thread, batch by batch, so they are done when the
    last row is. `file_names`: every name `files` will yield (see `OutputCombiner`). `on_rows`
    sees each file's output rows (its name, an Arrow table) before they are written.
    """
    # The rows are written out as they come: keeping every file's table as well would hold the
    # whole output in memory a second time.
    combiner = OutputCombiner(file_names, keep_tables=False)
    profile = OutputProfile(combiner.shared_companies)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="profile") as checker:
        profiled: list[Future[None]] = []
        csv_output = CsvOutput(
            forward=forward,
            line_checksums=forward is None,
            on_batch=lambda batch: profiled.append(checker.submit(profile.add, batch)),
        )
        for result in transform_files(files):
            table = combiner.add(result)
            if table is not None:
                if on_rows is not None:
                    on_rows(result.file_name, table)
                csv_output.add(table)
        csv_output.close()
        for done in profiled:
            done.result()  # re-raise a failure of the profiling
    return combiner.result(), csv_output, profile


def csv_byte_length(table: pa.Table) -> int:
    """How many bytes `output_csv_bytes(table)` writes, without writing them: every value is
    its final text (NULL: empty), one separator (comma or newline) after each."""
    values = sum(pc.sum(pc.binary_length(column)).as_py() or 0 for column in table.columns)
    return values + table.num_rows * table.num_columns


def content_fingerprint(data: bytes) -> str:
    """A short, stable fingerprint of the CSV's bytes (shown in the UI, used as data version)."""
    return short_digest(hashlib.sha256(data))


def short_digest(digest: hashlib._Hash) -> str:
    return digest.hexdigest()[:16]


def _csv_text(header: list[str], rows: Iterable[list[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def rejected_rows_csv(rows: Iterable[RejectedRow]) -> bytes:
    return _csv_text(
        REJECTED_ROWS_HEADER, ([r.file_name, r.line, r.reason, _inert(r.raw)] for r in rows)
    )


def _inert(text: str) -> str:
    """A rejected line's text as a spreadsheet shows it, not runs it: one starting like a
    formula (`=HYPERLINK(…)`) gets a leading `'` (OWASP's advice for CSV injection)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


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
