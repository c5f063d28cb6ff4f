"""The typed fast path: files whose every row is certain to pass the general path's row checks,
parsed straight into typed columns, one file or a whole batch of files at a time.

It exists for speed only and must give exactly what `validate.transform_general` gives (a test
compares them on generated edge cases). Its functions never reject a row: they either transform
a whole file or decline it and leave its result untouched, and the caller falls back.
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.pipeline.columns import PRICE_COLUMNS, RAW_COLUMNS
from stock_assets.pipeline.companies import company_name
from stock_assets.pipeline.derive import chunk, output_table, overflowing_rows
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.validate import VOLUME_DIGITS, whole_file_read_options

# The typed fast path (see `transform_clean_file`) takes a file only if its data lines hold
# nothing but these bytes. That rules out everything Arrow's typed parsers would tolerate but the
# row checks refuse: signs, exponents, `nan`/`inf`, spaces, CR, quotes, empty fields are caught
# by the casts; '-' is allowed only inside dates (checked by counting them).
_FAST_PATH_BYTES = b"0123456789.,-\n"
_RAW_STRING_TYPES = {name: pa.string() for name in RAW_COLUMNS}
# Dates the fast path takes as they are; anything outside goes through the row checks.
_FAST_FIRST_DAY = (date(1000, 1, 1) - date(1970, 1, 1)).days
_FAST_LAST_DAY = (date(9999, 12, 31) - date(1970, 1, 1)).days
# The fast paths read the six used columns as text, then cast them in one go.
_FAST_CONVERT = pv.ConvertOptions(
    column_types=_RAW_STRING_TYPES,
    include_columns=RAW_COLUMNS[:6],
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)


def clean_data_lines(data: bytes) -> int | None:
    """Where the data lines start (after the header) if they pass the fast path's byte gate,
    else None. Works on the whole file without copying it: the header's own bytes are known."""
    body_start = data.find(b"\n") + 1
    if (
        body_start == 0
        or body_start == len(data)
        or data[body_start : body_start + 1] == b"\n"
        or b"\n\n" in data
        or data.translate(None, _FAST_PATH_BYTES)
        != data[:body_start].translate(None, _FAST_PATH_BYTES)
    ):
        return None
    return body_start


def transform_clean_file(data: bytes, result: FileResult) -> bool:
    """The typed fast path: fill `result` and return True, or return False and touch nothing.

    It takes a file only when every row is certain to pass the row checks of the general path,
    so both paths give the same output (a test compares them on generated edge cases):
    the byte gate leaves no room for signs, exponents, NaN/inf, blanks, padding, CR or quotes;
    Arrow's casts refuse anything that is not a number or a real ISO date; a '-' count of two
    per row puts every '-' inside a date; strictly increasing dates cannot repeat. Real files
    are like that, so the general path (regexes, per-row reasons) only sees the odd one.
    """
    body_start = clean_data_lines(data)
    if body_start is None:
        return False
    try:
        raw = pv.read_csv(
            io.BytesIO(data),
            read_options=whole_file_read_options(data),
            # Any short or long row raises here (no handler): the general path reports it.
            parse_options=pv.ParseOptions(ignore_empty_lines=False),
            convert_options=_FAST_CONVERT,
        ).combine_chunks()
        n = raw.num_rows
        if n == 0 or data.count(b"-", body_start) != 2 * n:
            return False
        days, floats, volume = _typed_columns(raw)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    if days[0] < _FAST_FIRST_DAY or days[-1] > _FAST_LAST_DAY or not np.all(days[1:] > days[:-1]):
        return False
    if overflowing_rows(floats).any():
        return False
    result.rows_read = n
    result.table, open_zero = output_table(
        raw, floats, volume, pa.repeat(pa.scalar(company_name(result.file_name)), n)
    )
    result.open_zero_rows = int(open_zero.sum())
    return True


def transform_clean_batch(files: list[tuple[FileResult, bytes]]) -> list[bool]:
    """`transform_clean_file` for many files in one pass; per file, whether it was done.

    The data lines of all files are parsed as one CSV; the per-file rules (two '-' per row,
    strictly increasing dates within the file) are checked per file on the joined columns.
    """
    bodies: list[memoryview | bytes] = []
    rows, dashes_ok = [], []
    for _, data in files:
        # Only files that passed the byte gate (`clean_data_lines`) are batched: the data
        # lines start after the header's newline.
        body_start = data.find(b"\n") + 1
        bodies.append(memoryview(data)[body_start:])
        # No blank lines and no quotes: one row per line.
        rows.append(data.count(b"\n", body_start))
        if not data.endswith(b"\n"):
            bodies.append(b"\n")
            rows[-1] += 1
        dashes_ok.append(data.count(b"-", body_start) == 2 * rows[-1])
    counts = np.array(rows, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    try:
        raw = pv.read_csv(
            io.BytesIO(b"".join(bodies)),
            read_options=pv.ReadOptions(column_names=RAW_COLUMNS, use_threads=True),
            parse_options=pv.ParseOptions(ignore_empty_lines=False),
            convert_options=_FAST_CONVERT,
        ).combine_chunks()
        if raw.num_rows != counts.sum():
            return [False] * len(files)
        days, floats, volume = _typed_columns(raw)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [False] * len(files)  # one bad file spoils the batch; each is retried alone
    # Rows breaking a per-file rule: out-of-range dates, or a date not after the previous one
    # of the same file.
    bad_row = (days < _FAST_FIRST_DAY) | (days > _FAST_LAST_DAY)
    bad_row[1:] |= days[1:] <= days[:-1]
    bad_row[starts] &= (days[starts] < _FAST_FIRST_DAY) | (days[starts] > _FAST_LAST_DAY)
    bad_row |= overflowing_rows(floats)
    bad_files = set(np.searchsorted(starts, np.flatnonzero(bad_row), side="right") - 1)
    accepted = [ok and i not in bad_files for i, ok in enumerate(dashes_ok)]

    companies = pa.array([company_name(result.file_name) for result, _ in files], pa.string())
    company_column = companies.take(pa.array(np.repeat(np.arange(len(files)), counts)))
    table, open_zero = output_table(raw, floats, volume, company_column)
    open_zero_per_file = np.add.reduceat(open_zero.astype(np.int64), starts)
    for i, (result, _) in enumerate(files):
        if accepted[i]:
            result.rows_read = int(counts[i])
            result.table = table.slice(int(starts[i]), int(counts[i]))
            result.open_zero_rows = int(open_zero_per_file[i])
    return accepted


def _typed_columns(raw: pa.Table) -> tuple[np.ndarray, list[pa.Array], pa.Array]:
    """Dates as day numbers, the four prices as floats, volume as int64 (raises if any fails)."""
    days = chunk(pc.cast(raw["Date"], pa.date32())).view(pa.int32()).to_numpy()
    floats = [chunk(pc.cast(raw[name], pa.float64())) for name in PRICE_COLUMNS]
    volume = chunk(pc.cast(raw["Volume"], pa.int64()))
    # int64 also takes 19-digit counts, and leading zeros, that the general path's rule (at most
    # 18 digits as written) rejects: leave those rows to it.
    if len(volume) and pc.max(pc.utf8_length(raw["Volume"])).as_py() > VOLUME_DIGITS:
        raise pa.ArrowInvalid(f"a volume of more than {VOLUME_DIGITS} digits")
    return days, floats, volume
