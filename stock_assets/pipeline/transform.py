"""Raw stock CSV bytes → output rows in the spec's format, plus rejected rows with reasons.

Pure functions over bytes and Arrow tables; no S3, no Dagster. Every data row read ends up either
in the output or in the rejects, so counts always reconcile:
`rows_read = rows_written + rows_rejected`.

Output columns (all as text, exactly as they are written to the CSV and the table):
stock_date, open_value, high_value, low_value, close_value, volume_traded,
daily_percent_change, value_change, company_name.
"""

from __future__ import annotations

import io
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.pipeline.columns import (
    OUTPUT_COLUMNS,  # noqa: F401  (re-exported until the split)
    OUTPUT_SCHEMA,
    PRICE_COLUMNS,
    RAW_COLUMNS,
    RAW_HEADER,
)
from stock_assets.pipeline.companies import company_name

_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# Non-negative decimal, as the source writes prices: no sign, exponent, NaN or inf.
_PRICE_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
# Up to 18 digits: always fits the int64 the volume is parsed into.
_VOLUME_PATTERN = r"^[0-9]{1,18}$"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"

# The typed fast path (see `_transform_clean_file`) takes a file only if its data lines hold
# nothing but these bytes. That rules out everything Arrow's typed parsers would tolerate but the
# row checks refuse: signs, exponents, `nan`/`inf`, spaces, CR, quotes, empty fields are caught
# by the casts; '-' is allowed only inside dates (checked by counting them).
_FAST_PATH_BYTES = b"0123456789.,-\n"
_RAW_STRING_TYPES = {name: pa.string() for name in RAW_COLUMNS}
# Dates the fast path takes as they are; anything outside goes through the row checks.
_FAST_FIRST_DAY = (date(1000, 1, 1) - date(1970, 1, 1)).days
_FAST_LAST_DAY = (date(9999, 12, 31) - date(1970, 1, 1)).days
# A price written exactly as Python's repr writes it — no leading zeros, a '.', no trailing zero
# (except "X.0") — with at most 15 digits and a value of at least 1e-4 (or 0) *is*
# repr(float(text)): any decimal of <= 15 significant digits round-trips through a double, so
# no shorter string maps to the same double, and repr writes [1e-4, 1e16) without an exponent.
_REPR_LIKE_MAX_CHARS = 16  # 15 digits and the '.'
_DOT, _ZERO = ord("."), ord("0")
# The fast paths read the six used columns as text, then cast them in one go.
_FAST_CONVERT = pv.ConvertOptions(
    column_types=_RAW_STRING_TYPES,
    include_columns=RAW_COLUMNS[:6],
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)


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

    @property
    def rows_written(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    @property
    def company(self) -> str:
        return company_name(self.file_name)


def format_floats(values: pa.Array | pa.ChunkedArray | np.ndarray) -> pa.Array:
    """Floats → their shortest round-trip text, as Python's `repr` writes them (`30.0`, `1e-05`).

    Arrow's cast is fast and already gives the shortest digits, but writes whole numbers without
    `.0` and some numbers in a different exponent notation; only those rows are patched (`.0`
    appended, or Python's `repr` for the few in exponent territory). Nulls stay null (an empty
    CSV field). The masks are computed in numpy: a handful of C passes, no per-value Python.
    """
    if isinstance(values, np.ndarray):
        array = pa.array(values, type=pa.float64())
    elif isinstance(values, pa.ChunkedArray):
        array = values.combine_chunks()
    else:
        array = values
    if array.type != pa.float64():
        array = pc.cast(array, pa.float64())
    text = pc.cast(array, pa.string())
    if len(array) == 0:
        return text
    v = array.to_numpy(zero_copy_only=False)  # nulls read as NaN: no mask below selects them
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(v)
        # Where the notations can differ (exponents, tiny or huge values) Python decides.
        special = ((magnitude < 1e-4) & (magnitude != 0.0)) | (magnitude >= 1e16)
        special[_rows_containing(text, ord("e"))] = True
        whole = ~special & (np.floor(v) == v)
    if whole.any():
        mask = pa.array(whole)
        text = pc.replace_with_mask(
            text, mask, pc.binary_join_element_wise(text.filter(mask), ".0", "")
        )
    if special.any():
        rows = np.flatnonzero(special)
        as_python = [repr(x) for x in v[rows].tolist()]
        text = pc.replace_with_mask(text, pa.array(special), pa.array(as_python, pa.string()))
    return text


def _rows_containing(text: pa.Array, byte: int) -> np.ndarray:
    """Indices of the strings in `text` holding `byte`."""
    offsets, chars = _string_bytes(text)
    if len(chars) == 0:
        return np.empty(0, dtype=np.int64)
    positions = np.flatnonzero(chars[offsets[0] : offsets[-1]] == byte) + offsets[0]
    return np.unique(np.searchsorted(offsets, positions, side="right") - 1)


def _string_bytes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A StringArray's offsets (len + 1 of them) and character bytes, as numpy views (no copy)."""
    offsets_buffer, data_buffer = text.buffers()[1:3]
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        text.offset : text.offset + len(text) + 1
    ]
    chars = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer else np.empty(0, np.uint8)
    return offsets, chars


def _whole_file_read_options(data: bytes) -> pv.ReadOptions:
    """Raw columns by name, the header skipped, and one block per file, so a single very long
    line is parsed, not refused."""
    return pv.ReadOptions(
        column_names=RAW_COLUMNS,
        skip_rows=1,
        use_threads=False,
        block_size=max(len(data) + 1, 1 << 16),
    )


def _read_raw_csv(data: bytes, file_name: str) -> tuple[pa.Table, list[RejectedRow]]:
    """Parse the data lines as text columns; rows with the wrong field count are rejected."""
    malformed: list[RejectedRow] = []

    def on_invalid_row(row: pv.InvalidRow) -> str:
        malformed.append(
            RejectedRow(
                file_name,
                row.number or 0,
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
                row.text[:500],
            )
        )
        return "skip"

    table = pv.read_csv(
        io.BytesIO(data),
        read_options=_whole_file_read_options(data),
        parse_options=pv.ParseOptions(invalid_row_handler=on_invalid_row, ignore_empty_lines=False),
        convert_options=pv.ConvertOptions(
            column_types={name: pa.string() for name in RAW_COLUMNS},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, malformed


def _header_problem(data: bytes) -> str | None:
    if data.startswith(_GZIP_MAGIC):
        return "file is gzip-compressed, not a plain CSV"
    if b"\x00" in data[:4096]:
        return "file is binary (NUL bytes), not a CSV"
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        header = first_line.decode("utf-8")
    except UnicodeDecodeError:
        return "first line is not UTF-8 text"
    if header.replace(" ", "") != RAW_HEADER:
        return f"header is {header[:120]!r}, expected {RAW_HEADER!r}"
    return None


def _first_problem(table: pa.Table) -> tuple[np.ndarray, list[str | None]]:
    """For each row, the first validation problem (or None); plus the parsed float columns."""
    n = table.num_rows
    problems: list[str | None] = [None] * n
    checks: list[tuple[pa.Array, str]] = []

    dates = table["Date"]
    # Arrow's strptime rolls impossible dates over (2020-02-30 → 2020-03-01), so a date is
    # valid only if it parses and prints back as the same text.
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    round_trip = pc.strftime(parsed, format="%Y-%m-%d")
    date_ok = pc.fill_null(
        pc.and_(pc.match_substring_regex(dates, _DATE_PATTERN), pc.equal(round_trip, dates)),
        False,
    )
    checks.append((date_ok, "Date is not a valid ISO date (YYYY-MM-DD)"))
    prices_ok = pa.array(np.ones(n, dtype=bool))
    for name in PRICE_COLUMNS:
        ok = pc.match_substring_regex(table[name], _PRICE_PATTERN)
        checks.append((ok, f"{name} is not a non-negative decimal number"))
        prices_ok = pc.and_(prices_ok, ok)
    checks.append(
        (
            pc.match_substring_regex(table["Volume"], _VOLUME_PATTERN),
            "Volume is not a non-negative integer",
        )
    )
    # Only rows whose prices passed above are parsed; the others already have their problem.
    floats = [
        pc.cast(pc.if_else(prices_ok, table[name], pa.scalar("0")), pa.float64())
        for name in PRICE_COLUMNS
    ]
    checks.append((pa.array(~_overflowing_rows(floats)), _OVERFLOW_REASON))
    all_ok = np.ones(n, dtype=bool)
    for ok, reason in checks:
        ok_np = ok.to_numpy(zero_copy_only=False).astype(bool)
        bad = np.flatnonzero(~ok_np & all_ok)
        for i in bad:
            problems[i] = reason
        all_ok &= ok_np
    return all_ok, problems


_OVERFLOW_REASON = "a price, or the change or percentage computed from it, overflows a double"


def _overflowing_rows(floats: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """Rows whose numbers a double cannot hold: a price of hundreds of digits parses as inf, and
    an Open of 1e-308 makes any change an infinite percentage. The output would print `inf`,
    which the spec's format never has; such rows are rejected instead."""
    open_np, high_np, low_np, close_np = (
        np.asarray(f.to_numpy(zero_copy_only=False), dtype=np.float64) for f in floats
    )
    with np.errstate(all="ignore"):
        change = close_np - open_np
        percent = change / open_np * 100.0
    finite = np.isfinite(open_np) & np.isfinite(high_np) & np.isfinite(low_np)
    finite &= np.isfinite(close_np) & np.isfinite(change)
    finite &= (open_np == 0.0) | np.isfinite(percent)
    return ~finite


def _line_numbers(n_parsed: int, malformed: Sequence[RejectedRow]) -> np.ndarray:
    """Physical line numbers of the parsed rows (line 1 is the header)."""
    skipped = {r.line for r in malformed}
    lines = np.empty(n_parsed, dtype=np.int64)
    line, i = 2, 0
    while i < n_parsed:
        if line not in skipped:
            lines[i] = line
            i += 1
        line += 1
    return lines


def _raw_text(table: pa.Table, index: int) -> str:
    return ",".join(str(table[c][index].as_py()) for c in RAW_COLUMNS)[:500]


def transform_file(file_name: str, data: bytes) -> FileResult:
    """Validate and transform one raw stock file."""
    result, data = _start(file_name, data)
    if result.skip_reason is None and not _transform_clean_file(data, result):
        _transform_general(data, result)
    return result


def transform_files(
    files: Iterable[tuple[str, bytes]], batch_bytes: int = 8 << 20
) -> Iterator[FileResult]:
    """`transform_file` for each (file name, bytes): the same results, in the same order.

    Clean files (see `_transform_clean_file`) are parsed and transformed together, about
    `batch_bytes` at a time, so each Arrow call's fixed cost is paid once per batch rather than
    once per file (for 1,000 small files that is most of the work). `files` is consumed lazily:
    fed by `map_objects`, downloads go on while a batch is transformed.
    """
    pending: list[tuple[FileResult, bytes | None]] = []
    pending_bytes = 0
    # Each full batch is transformed on a worker thread while this one gathers the next batch
    # and the caller consumes the last one (Arrow's kernels release the GIL, so they overlap).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transform") as worker:
        submitted: deque[Future[list[FileResult]]] = deque()
        for file_name, raw_data in files:
            result, data = _start(file_name, raw_data)
            if result.skip_reason is None and _clean_data_lines(data) is not None:
                pending.append((result, data))
                pending_bytes += len(data)
            else:
                if result.skip_reason is None:
                    _transform_general(data, result)
                pending.append((result, None))
            if pending_bytes >= batch_bytes:
                submitted.append(worker.submit(_finish_batch, pending))
                pending, pending_bytes = [], 0
                if len(submitted) > 1:
                    yield from submitted.popleft().result()
        submitted.append(worker.submit(_finish_batch, pending))
        while submitted:
            yield from submitted.popleft().result()


def _start(file_name: str, data: bytes) -> tuple[FileResult, bytes]:
    """The checks every file gets first; sets `skip_reason` for files that cannot be read."""
    result = FileResult(file_name=file_name, bytes_read=len(data))
    if not data.strip():
        result.skip_reason = "empty file (no header, no rows)"
        return result, data
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    result.skip_reason = _header_problem(data)
    if result.skip_reason is None and b"\n" not in data:
        data += b"\n"  # a header without its newline: the same file, read as 0 rows, not skipped
    return result, data


def _transform_general(data: bytes, result: FileResult) -> None:
    """The general path: every row checked, bad rows rejected with their line and reason."""
    try:
        raw, malformed = _read_raw_csv(data, result.file_name)
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        result.skip_reason = f"unreadable CSV: {err}"[:300]
        return

    # A trailing blank line is not a row; other blank lines are rejected like any bad row.
    result.rows_read = raw.num_rows + len(malformed)
    if raw.num_rows and raw["Date"][-1].as_py() == "" and data.endswith((b"\n\n", b"\r\n\r\n")):
        raw = raw.slice(0, raw.num_rows - 1)
        result.rows_read -= 1
    if b"\r" in data or b" " in data or b"\t" in data:  # CRLF line ends, padding around fields
        for index, name in enumerate(RAW_COLUMNS):
            raw = raw.set_column(index, name, pc.utf8_trim_whitespace(raw[name]))

    valid, problems = _first_problem(raw)
    valid = _mark_duplicate_dates(raw, valid, problems)
    rejected = list(malformed)
    if not valid.all():
        lines = _line_numbers(raw.num_rows, malformed)
        for i in np.flatnonzero(~valid):
            rejected.append(
                RejectedRow(result.file_name, int(lines[i]), problems[i], _raw_text(raw, i))
            )
        rejected.sort(key=lambda r: r.line)
        raw = raw.filter(pa.array(valid))
    result.rejected = rejected
    result.table, result.open_zero_rows = _to_output(raw, company_name(result.file_name))


def _mark_duplicate_dates(
    raw: pa.Table, valid: np.ndarray, problems: list[str | None]
) -> np.ndarray:
    """Reject every repeat of a date already seen in this file (first occurrence wins)."""
    dates = np.asarray(raw["Date"].to_numpy(zero_copy_only=False), dtype=object)
    candidates = np.flatnonzero(valid)
    _, first = np.unique(dates[candidates], return_index=True)
    if len(first) == len(candidates):
        return valid
    keep = np.zeros(len(valid), dtype=bool)
    keep[candidates[first]] = True
    repeats = np.flatnonzero(valid & ~keep)
    for i in repeats:
        problems[i] = (
            f"duplicate (company_name, stock_date): {dates[i]} appears earlier in the file"
        )
    return valid & keep


def _typed_columns(raw: pa.Table) -> tuple[np.ndarray, list[pa.Array], pa.Array]:
    """Dates as day numbers, the four prices as floats, volume as int64 (raises if any fails)."""
    days = _chunk(pc.cast(raw["Date"], pa.date32())).view(pa.int32()).to_numpy()
    floats = [_chunk(pc.cast(raw[name], pa.float64())) for name in PRICE_COLUMNS]
    volume = _chunk(pc.cast(raw["Volume"], pa.int64()))
    return days, floats, volume


def _transform_clean_file(data: bytes, result: FileResult) -> bool:
    """The typed fast path: fill `result` and return True, or return False and touch nothing.

    It takes a file only when every row is certain to pass the row checks of the general path,
    so both paths give the same output (a test compares them on generated edge cases):
    the byte gate leaves no room for signs, exponents, NaN/inf, blanks, padding, CR or quotes;
    Arrow's casts refuse anything that is not a number or a real ISO date; a '-' count of two
    per row puts every '-' inside a date; strictly increasing dates cannot repeat. Real files
    are like that, so the general path (regexes, per-row reasons) only sees the odd one.
    """
    body_start = _clean_data_lines(data)
    if body_start is None:
        return False
    try:
        raw = pv.read_csv(
            io.BytesIO(data),
            read_options=_whole_file_read_options(data),
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
    if _overflowing_rows(floats).any():
        return False
    result.rows_read = n
    result.table, open_zero = _output_table(
        raw, floats, volume, pa.repeat(pa.scalar(company_name(result.file_name)), n)
    )
    result.open_zero_rows = int(open_zero.sum())
    return True


def _clean_data_lines(data: bytes) -> int | None:
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


def _finish_batch(pending: list[tuple[FileResult, bytes | None]]) -> list[FileResult]:
    """Transform the batch's clean files together; any it will not vouch for go one by one."""
    clean = [(result, data) for result, data in pending if data is not None]
    accepted = _transform_clean_batch(clean) if clean else []
    for (result, data), ok in zip(clean, accepted, strict=True):
        if not ok and not _transform_clean_file(data, result):
            _transform_general(data, result)
    return [result for result, _ in pending]


def _transform_clean_batch(files: list[tuple[FileResult, bytes]]) -> list[bool]:
    """`_transform_clean_file` for many files in one pass; per file, whether it was done.

    The data lines of all files are parsed as one CSV; the per-file rules (two '-' per row,
    strictly increasing dates within the file) are checked per file on the joined columns.
    """
    bodies: list[memoryview | bytes] = []
    rows, dashes_ok = [], []
    for _, data in files:
        # Only files that passed the byte gate (`_clean_data_lines`) are batched: the data
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
    bad_row |= _overflowing_rows(floats)
    bad_files = set(np.searchsorted(starts, np.flatnonzero(bad_row), side="right") - 1)
    accepted = [ok and i not in bad_files for i, ok in enumerate(dashes_ok)]

    companies = pa.array([company_name(result.file_name) for result, _ in files], pa.string())
    company_column = companies.take(pa.array(np.repeat(np.arange(len(files)), counts)))
    table, open_zero = _output_table(raw, floats, volume, company_column)
    open_zero_per_file = np.add.reduceat(open_zero.astype(np.int64), starts)
    for i, (result, _) in enumerate(files):
        if accepted[i]:
            result.rows_read = int(counts[i])
            result.table = table.slice(int(starts[i]), int(counts[i]))
            result.open_zero_rows = int(open_zero_per_file[i])
    return accepted


def _chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _to_output(raw: pa.Table, company: str) -> tuple[pa.Table, int]:
    """Output rows from raw rows that passed every check (the general path)."""
    floats = [_chunk(pc.cast(raw[name], pa.float64())) for name in PRICE_COLUMNS]
    volume = _chunk(pc.cast(raw["Volume"], pa.int64()))
    table, open_zero = _output_table(
        raw, floats, volume, pa.repeat(pa.scalar(company), raw.num_rows)
    )
    return table, int(open_zero.sum())


def _output_table(
    raw: pa.Table, floats: list[pa.Array], volume: pa.Array, company: pa.Array
) -> tuple[pa.Table, np.ndarray]:
    """The nine output columns as text, from validated raw text plus its parsed numbers; and
    which rows have Open = 0."""
    open_np, close_np = floats[0].to_numpy(), floats[3].to_numpy()
    open_zero = open_np == 0.0
    # Overflowing rows are rejected before output (see `_overflowing_rows`); a batch may still
    # compute them here before the fast path turns it down.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        change_np = close_np - open_np
        # (Close − Open) / Open × 100; undefined where Open is 0, so that field stays empty.
        percent_np = change_np / open_np * 100.0
    percent = pa.array(percent_np, type=pa.float64(), mask=open_zero if open_zero.any() else None)
    columns = [
        _chunk(raw["Date"]),
        *(
            _repr_of_prices(_chunk(raw[name]), values)
            for name, values in zip(PRICE_COLUMNS, floats, strict=True)
        ),
        _repr_of_volumes(_chunk(raw["Volume"]), volume),
        format_floats(percent),
        format_floats(pa.array(change_np, type=pa.float64())),
        company,
    ]
    return pa.Table.from_arrays(columns, schema=OUTPUT_SCHEMA), open_zero


def _repr_of_prices(text: pa.Array, values: pa.Array) -> pa.Array:
    """repr(float(price)) for each validated price text (digits and at most one '.'): the text
    itself where it already is that, else formatted. Source prices are nearly all written like
    repr, so little is formatted; the test is a few numpy passes over the text's bytes."""
    if len(text) == 0:
        return text
    v = values.to_numpy()
    offsets, chars = _string_bytes(text)
    starts, ends = offsets[:-1], offsets[1:]
    last = len(chars) - 1
    # Index clipping only matters for strings too short to pass the length test below anyway.
    first_c, second_c = chars[starts], chars[np.minimum(starts + 1, last)]
    last_c, before_last_c = chars[ends - 1], chars[np.maximum(ends - 2, 0)]
    whole = np.floor(v) == v
    as_is = (
        (ends - starts >= 3)
        & (ends - starts <= _REPR_LIKE_MAX_CHARS)
        & ((v >= 1e-4) | (v == 0.0))
        & (first_c != _DOT)  # an integer part ...
        & ((first_c != _ZERO) | (second_c == _DOT))  # ... without leading zeros
        & (last_c != _DOT)  # a fraction ...
        & ((last_c != _ZERO) | (before_last_c == _DOT))  # ... without trailing zeros but "X.0"
        # A text without '.' is a whole number; a whole number's repr ends in ".0".
        & (~whole | ((last_c == _ZERO) & (before_last_c == _DOT)))
    )
    if as_is.all():
        return text
    redo = pa.array(~as_is)
    return pc.replace_with_mask(text, redo, format_floats(values.filter(redo)))


def _repr_of_volumes(text: pa.Array, values: pa.Array) -> pa.Array:
    """str(int(volume)) for each validated volume text (digits only): the text itself unless
    it has leading zeros."""
    if len(text) == 0:
        return text
    offsets, chars = _string_bytes(text)
    as_is = (chars[offsets[:-1]] != _ZERO) | (np.diff(offsets) == 1)
    return text if as_is.all() else pc.cast(values, pa.string())


@dataclass
class CombinedOutput:
    table: pa.Table
    files: list[FileResult]
    cross_file_duplicates: list[RejectedRow]

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

    def __init__(self, file_names: Iterable[str]) -> None:
        counts = Counter(company_name(name) for name in file_names)
        self._shared = {company for company, n in counts.items() if n > 1}
        self._dates_by_company: dict[str, set[str]] = {}
        self._files: list[FileResult] = []
        self._tables: list[pa.Table] = []
        self._cross: list[RejectedRow] = []

    def add(self, result: FileResult) -> pa.Table | None:
        """Take one file's result; returns the rows it adds to the output (None: none)."""
        self._files.append(result)
        if result.table is None or result.table.num_rows == 0:
            return None
        if result.company in self._shared:
            result.table = self._drop_dates_seen(result)
        self._tables.append(result.table)
        return result.table

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
        table = pa.concat_tables(self._tables) if self._tables else OUTPUT_SCHEMA.empty_table()
        return CombinedOutput(table=table, files=self._files, cross_file_duplicates=self._cross)


def combine(results: Iterable[FileResult]) -> CombinedOutput:
    """All file outputs joined in filter order (see `OutputCombiner`)."""
    files = list(results)
    combiner = OutputCombiner(f.file_name for f in files)
    for f in files:
        combiner.add(f)
    return combiner.result()
