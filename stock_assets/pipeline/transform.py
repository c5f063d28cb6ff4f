"""Raw stock CSV bytes → output rows in the spec's format, plus rejected rows with reasons.

This module only chooses the path each file takes and runs batches on a worker thread; the work
itself is split by concern: `validate` (the checks every file gets, and the general row-by-row
path), `fast_path` (typed parsing of files certain to pass), `derive` (the output columns both
paths build), `floats` (Python's number text), `records` (the results) and `combine` (joining
files). Pure functions over bytes and Arrow tables; no S3, no Dagster. Every data row read ends
up either in the output or in the rejects (a cross-file duplicate among them, see `combine`), so
counts always reconcile: `rows_read = rows_written + rows_rejected`.

Output columns (all as text, exactly as they are written to the CSV and the table):
stock_date, open_value, high_value, low_value, close_value, volume_traded,
daily_percent_change, value_change, company_name.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from stock_assets.pipeline.fast_path import (
    clean_data_lines,
    transform_clean_batch,
    transform_clean_file,
)
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.validate import start, transform_general


def transform_file(file_name: str, data: bytes) -> FileResult:
    """Validate and transform one raw stock file."""
    result, data = start(file_name, data)
    if result.skip_reason is None and not transform_clean_file(data, result):
        transform_general(data, result)
    return result


def transform_files(
    files: Iterable[tuple[str, bytes]], batch_bytes: int = 8 << 20
) -> Iterator[FileResult]:
    """`transform_file` for each (file name, bytes): the same results, in the same order.

    Clean files (see `fast_path.transform_clean_file`) are parsed and transformed together,
    about `batch_bytes` at a time, so each Arrow call's fixed cost is paid once per batch rather
    than once per file (for 1,000 small files that is most of the work). `files` is consumed
    lazily: fed by the parallel reads, downloads go on while a batch is transformed.
    """
    pending: list[tuple[FileResult, bytes | None]] = []
    pending_bytes = 0
    # Each full batch is transformed on a worker thread while this one gathers the next batch
    # and the caller consumes the last one (Arrow's kernels release the GIL, so they overlap).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transform") as worker:
        submitted: deque[Future[list[FileResult]]] = deque()
        for file_name, raw_data in files:
            result, data = start(file_name, raw_data)
            if result.skip_reason is None and clean_data_lines(data) is not None:
                pending.append((result, data))
                pending_bytes += len(data)
            else:
                if result.skip_reason is None:
                    transform_general(data, result)
                pending.append((result, None))
            if pending_bytes >= batch_bytes:
                submitted.append(worker.submit(_finish_batch, pending))
                pending, pending_bytes = [], 0
                if len(submitted) > 1:
                    yield from submitted.popleft().result()
        submitted.append(worker.submit(_finish_batch, pending))
        while submitted:
            yield from submitted.popleft().result()


def _finish_batch(pending: list[tuple[FileResult, bytes | None]]) -> list[FileResult]:
    """Transform the batch's clean files together; any it will not vouch for go one by one
    (the single-file fast path, then the general path), as `transform_file` would take them."""
    clean = [(result, data) for result, data in pending if data is not None]
    accepted = transform_clean_batch(clean) if clean else []
    for (result, data), ok in zip(clean, accepted, strict=True):
        if not ok and not transform_clean_file(data, result):
            transform_general(data, result)
    return [result for result, _ in pending]
