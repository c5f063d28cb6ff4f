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
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.pipeline.companies import company_name

RAW_COLUMNS = ["Date", "Open", "High", "Low", "Close", "Volume", "OpenInt"]
RAW_HEADER = ",".join(RAW_COLUMNS)
PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
OUTPUT_COLUMNS = [
    "stock_date",
    "open_value",
    "high_value",
    "low_value",
    "close_value",
    "volume_traded",
    "daily_percent_change",
    "value_change",
    "company_name",
]
OUTPUT_SCHEMA = pa.schema([(name, pa.string()) for name in OUTPUT_COLUMNS])

_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# Non-negative decimal, as the source writes prices: no sign, exponent, NaN or inf.
_PRICE_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_VOLUME_PATTERN = r"^[0-9]+$"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


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


def format_floats(values: pa.Array | np.ndarray) -> pa.Array:
    """Floats → their shortest round-trip text, as Python's `repr` writes them (`30.0`, `1e-05`).

    Arrow's cast is fast and already gives the shortest digits, but writes whole numbers without
    `.0` and very small or large numbers in a different notation; those few go through `repr`.
    Nulls stay null (an empty CSV field).
    """
    array = pa.array(values, type=pa.float64()) if isinstance(values, np.ndarray) else values
    text = pc.cast(array, pa.string())
    magnitude = pc.abs(array)
    has_exponent = pc.match_substring(text, "e")
    # Where the notations can differ (exponents, tiny or huge values) Python decides.
    unusual = pc.or_(
        has_exponent,
        pc.or_(
            pc.and_(pc.less(magnitude, 1e-4), pc.not_equal(magnitude, 0.0)),
            pc.greater_equal(magnitude, 1e16),
        ),
    )
    unusual = pc.fill_null(unusual, False)
    # Whole numbers are spotted on the floats (cheap), not by matching the text.
    whole = pc.and_(pc.equal(pc.floor(array), array), pc.invert(unusual))
    text = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
    if pc.any(unusual).as_py():
        # Rare: fall back to Python for the handful of values in exponent territory.
        as_python = [None if v is None else repr(float(v)) for v in array.to_pylist()]
        text = pc.if_else(unusual, pa.array(as_python, pa.string()), text)
    return text


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
        read_options=pv.ReadOptions(
            column_names=RAW_COLUMNS,
            skip_rows=1,
            use_threads=False,
            # One block per file, so a single very long line is parsed, not refused.
            block_size=max(len(data) + 1, 1 << 16),
        ),
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
    for name in PRICE_COLUMNS:
        ok = pc.match_substring_regex(table[name], _PRICE_PATTERN)
        checks.append((ok, f"{name} is not a non-negative decimal number"))
    checks.append(
        (
            pc.match_substring_regex(table["Volume"], _VOLUME_PATTERN),
            "Volume is not a non-negative integer",
        )
    )
    all_ok = np.ones(n, dtype=bool)
    for ok, reason in checks:
        ok_np = ok.to_numpy(zero_copy_only=False).astype(bool)
        bad = np.flatnonzero(~ok_np & all_ok)
        for i in bad:
            problems[i] = reason
        all_ok &= ok_np
    return all_ok, problems


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
    result = FileResult(file_name=file_name, bytes_read=len(data))
    if not data.strip():
        result.skip_reason = "empty file (no header, no rows)"
        return result
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    problem = _header_problem(data)
    if problem:
        result.skip_reason = problem
        return result
    try:
        raw, malformed = _read_raw_csv(data, file_name)
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        result.skip_reason = f"unreadable CSV: {err}"[:300]
        return result

    # A trailing blank line is not a row; other blank lines are rejected like any bad row.
    result.rows_read = raw.num_rows + len(malformed)
    if raw.num_rows and raw["Date"][-1].as_py() == "" and data.endswith((b"\n\n", b"\r\n\r\n")):
        raw = raw.slice(0, raw.num_rows - 1)
        result.rows_read -= 1
    if b"\r" in data or b" " in data:  # tolerate CRLF line ends and padding around fields
        for index, name in enumerate(RAW_COLUMNS):
            raw = raw.set_column(index, name, pc.utf8_trim_whitespace(raw[name]))

    valid, problems = _first_problem(raw)
    valid = _mark_duplicate_dates(raw, valid, problems)
    rejected = list(malformed)
    if not valid.all():
        lines = _line_numbers(raw.num_rows, malformed)
        for i in np.flatnonzero(~valid):
            rejected.append(RejectedRow(file_name, int(lines[i]), problems[i], _raw_text(raw, i)))
        rejected.sort(key=lambda r: r.line)
        raw = raw.filter(pa.array(valid))
    result.rejected = rejected
    result.table, result.open_zero_rows = _to_output(raw, company_name(file_name))
    return result


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


def _to_output(raw: pa.Table, company: str) -> tuple[pa.Table, int]:
    n = raw.num_rows
    floats = {name: pc.cast(raw[name], pa.float64()) for name in PRICE_COLUMNS}
    open_, close = floats["Open"], floats["Close"]
    change = pc.subtract(close, open_)
    open_zero = pc.equal(open_, 0.0)
    # (Close − Open) / Open × 100; undefined where Open is 0, so that field stays empty (NULL).
    safe_open = pc.if_else(open_zero, pa.scalar(None, pa.float64()), open_)
    percent = pc.multiply(pc.divide(change, safe_open), 100.0)
    columns = [
        raw["Date"],
        *(format_floats(floats[name]) for name in PRICE_COLUMNS),
        pc.cast(pc.cast(raw["Volume"], pa.int64()), pa.string()),
        format_floats(percent),
        format_floats(change),
        pa.array([company] * n, pa.string()) if n else pa.array([], pa.string()),
    ]
    columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    table = pa.Table.from_arrays(columns, schema=OUTPUT_SCHEMA)
    return table, int(pc.sum(open_zero).as_py() or 0)


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


def combine(results: Iterable[FileResult]) -> CombinedOutput:
    """Concatenate file outputs in filter order; drop rows whose (company, date) another file
    already supplied (two files can share a company name, e.g. `abc.us.csv` and `abc.uk.csv`)."""
    files = list(results)
    tables: list[pa.Table] = []
    # Only companies fed by more than one file can collide; track just their dates.
    shared = {c for c, n in Counter(f.company for f in files).items() if n > 1}
    dates_by_company: dict[str, set[str]] = {}
    cross: list[RejectedRow] = []
    for f in files:
        if f.table is None or f.table.num_rows == 0:
            continue
        table = f.table
        if f.company not in shared:
            pass
        elif f.company in dates_by_company:
            seen = dates_by_company[f.company]
            dates = table["stock_date"].to_pylist()
            keep = [d not in seen for d in dates]
            for d, k in zip(dates, keep, strict=True):
                if not k:
                    cross.append(
                        RejectedRow(
                            f.file_name,
                            0,
                            f"duplicate (company_name, stock_date): {f.company} {d} "
                            "already supplied by an earlier file",
                            d,
                        )
                    )
            table = table.filter(pa.array(keep))
            f.table = table
            seen.update(dates)
        else:
            dates_by_company[f.company] = set(table["stock_date"].to_pylist())
        tables.append(table)
    combined = pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()
    return CombinedOutput(table=combined, files=files, cross_file_duplicates=cross)
