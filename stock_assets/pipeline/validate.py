"""The general path: any file that can be read, checked row by row, each bad row rejected with
its line number and reason.

Every file starts here (`start`: empty, compressed, binary or wrongly headed files are skipped
with a reason). Files the typed fast path will not vouch for are then transformed by
`transform_general`, which owns the row rules the fast path must reproduce: ISO dates that
exist, non-negative decimal prices, integer volumes, numbers a double can hold, no repeated date
within a file, and the physical line number of every rejected row.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.pipeline.columns import PRICE_COLUMNS, RAW_COLUMNS, RAW_HEADER
from stock_assets.pipeline.companies import company_name
from stock_assets.pipeline.derive import chunk, output_table, overflowing_rows
from stock_assets.pipeline.records import FileResult, RejectedRow

_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# Non-negative decimal, as the source writes prices: no sign, exponent, NaN or inf.
_PRICE_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
# Up to 18 digits: always fits the int64 the volume is parsed into (the fast path keeps the
# same bound, see fast_path._typed_columns).
VOLUME_DIGITS = 18
_VOLUME_PATTERN = rf"^[0-9]{{1,{VOLUME_DIGITS}}}$"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_NOT_UTF8_REASON = "line is not UTF-8 text (the bytes that are not are shown as U+FFFD)"
_OVERFLOW_REASON = "a price, or the change or percentage computed from it, overflows a double"


def whole_file_read_options(data: bytes) -> pv.ReadOptions:
    """Raw columns by name, the header skipped, and one block per file, so a single very long
    line is parsed, not refused."""
    return pv.ReadOptions(
        column_names=RAW_COLUMNS,
        skip_rows=1,
        use_threads=False,
        block_size=max(len(data) + 1, 1 << 16),
    )


def start(file_name: str, data: bytes) -> tuple[FileResult, bytes]:
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


def transform_general(data: bytes, result: FileResult) -> None:
    """The general path: every row checked, bad rows rejected with their line and reason."""
    try:
        data.decode("utf-8")
        not_utf8 = False
    except UnicodeDecodeError:
        # Arrow refuses the whole file over one such byte; as U+FFFD it costs only its row.
        data, not_utf8 = data.decode("utf-8", "replace").encode(), True
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

    valid, problems = _first_problem(raw, not_utf8)
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
        read_options=whole_file_read_options(data),
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


def _first_problem(table: pa.Table, not_utf8: bool = False) -> tuple[np.ndarray, list[str | None]]:
    """Which rows pass every check; and for each row, its first validation problem (or None).
    `not_utf8`: the file's bytes that were not UTF-8 are U+FFFD in `table`."""
    n = table.num_rows
    problems: list[str | None] = [None] * n
    checks: list[tuple[pa.Array, str]] = []
    if not_utf8:
        replaced = [pc.match_substring(table[name], "\ufffd") for name in RAW_COLUMNS]
        checks.append((pc.invert(functools.reduce(pc.or_, replaced)), _NOT_UTF8_REASON))

    dates = table["Date"]
    # Arrow's strptime rolls impossible dates over (2020-02-30 → 2020-03-01), so a date is
    # valid only if it parses and prints back as the same text. It also takes year 0, which
    # no calendar has (Python's date and PostgreSQL's refuse it).
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    round_trip = pc.strftime(parsed, format="%Y-%m-%d")
    date_ok = pc.fill_null(
        pc.and_(
            pc.and_(pc.match_substring_regex(dates, _DATE_PATTERN), pc.equal(round_trip, dates)),
            pc.greater_equal(dates, "0001"),
        ),
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
    checks.append((pa.array(~overflowing_rows(floats)), _OVERFLOW_REASON))
    all_ok = np.ones(n, dtype=bool)
    for ok, reason in checks:
        ok_np = ok.to_numpy(zero_copy_only=False).astype(bool)
        bad = np.flatnonzero(~ok_np & all_ok)
        for i in bad:
            problems[i] = reason
        all_ok &= ok_np
    return all_ok, problems


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


def _to_output(raw: pa.Table, company: str) -> tuple[pa.Table, int]:
    """Output rows from raw rows that passed every check (the general path)."""
    floats = [chunk(pc.cast(raw[name], pa.float64())) for name in PRICE_COLUMNS]
    volume = chunk(pc.cast(raw["Volume"], pa.int64()))
    table, open_zero = output_table(
        raw, floats, volume, pa.repeat(pa.scalar(company), raw.num_rows)
    )
    return table, int(open_zero.sum())
