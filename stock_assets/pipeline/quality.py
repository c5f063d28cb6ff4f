"""Data-quality measurements over the output table (Arrow, vectorised) and the CSV bytes.

Pure functions: each returns counts and a few examples. `stock_assets.checks` turns them into
Dagster asset check results; the thresholds and severities live there.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stock_assets.pipeline.columns import PRICE_COLUMNS
from stock_assets.pipeline.records import RejectedRow

EXAMPLES = 5
# A number as a double parses it (Arrow's cast to float64 accepts exactly these, and inf/nan,
# which the format check refuses as not finite). The fast path of the format check casts; the
# slow path matches this and checks finiteness, so both judge a value the same way.
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_PRICE_OUTPUT = ["open_value", "high_value", "low_value", "close_value"]


@dataclass
class Finding:
    """How many rows have a property, with a few of them as examples."""

    count: int
    examples: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.count > 0


def _examples(table: pa.Table, mask: pa.Array, columns: list[str]) -> list[str]:
    sample = table.filter(mask).select(columns).slice(0, EXAMPLES).to_pylist()
    return [", ".join(f"{k}={v}" for k, v in row.items()) for row in sample]


class _Parsed:
    """The text columns of one table converted once, for the several checks that read them
    (the format check, the findings and the duplicate keys all need the same numbers)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._floats: dict[str, tuple[pa.ChunkedArray, bool]] = {}
        self._dates: tuple[pa.ChunkedArray, bool] | None = None

    def floats(self, column: str) -> tuple[pa.ChunkedArray, bool]:
        """float64 (a value that is not a number becomes null), and whether every value
        converted as it is."""
        if column not in self._floats:
            text = self.table[column]
            try:
                self._floats[column] = (pc.cast(text, pa.float64()), True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numeric = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
                values = pc.cast(
                    pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.float64()
                )
                self._floats[column] = (values, False)
        return self._floats[column]

    def dates(self) -> tuple[pa.ChunkedArray, bool]:
        """stock_date as date32 (null where it is not a date), and whether every value was."""
        if self._dates is None:
            text = self.table["stock_date"]
            try:
                self._dates = (pc.cast(text, pa.date32()), True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
                self._dates = (pc.cast(parsed, pa.date32()), False)
        return self._dates


def duplicate_keys(table: pa.Table) -> Finding:
    """(company_name, stock_date) pairs that occur more than once."""
    return _duplicates_among(table, _row_keys(table, {}))


_DAY_BITS = 23  # days from 1970 for years 1..9999 lie within ±2**22


def _row_keys(
    table: pa.Table, company_ids: dict[str, int], first_row: int = 0, parsed: _Parsed | None = None
) -> np.ndarray:
    """One int64 per row for (company, date): integer keys sort far faster than two string
    columns. `company_ids` numbers the companies (kept across batches for the same numbers). A
    row whose date does not parse (formats_valid reports it) gets a key of its own, negative."""
    if table.num_rows == 0:
        return np.empty(0, np.int64)
    company = pc.dictionary_encode(table["company_name"]).combine_chunks()
    ids = np.array(
        [company_ids.setdefault(name, len(company_ids)) for name in company.dictionary.to_pylist()],
        dtype=np.int64,
    )
    days = pc.cast((parsed or _Parsed(table)).dates()[0], pa.int32())
    valid = pc.is_valid(days).to_numpy(zero_copy_only=False)
    day_numbers = pc.fill_null(days, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    keys = (ids[company.indices.to_numpy()] << _DAY_BITS) + day_numbers + (1 << (_DAY_BITS - 1))
    rows = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    return np.where(valid, keys, -1 - rows)


def _duplicates_among(
    table: pa.Table | None, keys: np.ndarray, companies: dict[int, str] | None = None
) -> Finding:
    """Rows whose key an earlier row has; examples: the first repeated keys, in table order,
    taken from `table`, or decoded from the keys themselves (`companies`: id → name)."""
    unique, first_rows, counts = np.unique(keys, return_index=True, return_counts=True)
    repeated = counts > 1
    if not repeated.any():
        return Finding(0)
    order = np.argsort(first_rows[repeated])[:EXAMPLES]
    if table is not None:
        sample = table.take(pa.array(first_rows[repeated][order])).select(
            ["company_name", "stock_date"]
        )
        pairs = [(row["company_name"], row["stock_date"]) for row in sample.to_pylist()]
    else:  # a repeated key always holds a valid date: unparsable ones get a key of their own
        assert companies is not None
        pairs = [_decode_key(int(key), companies) for key in unique[repeated][order]]
    examples = [f"company_name={company}, stock_date={day}" for company, day in pairs]
    return Finding(int((counts[repeated] - 1).sum()), examples)


def _decode_key(key: int, companies: dict[int, str]) -> tuple[str, str]:
    """(company, ISO date) of a `_row_keys` key."""
    day = (key & ((1 << _DAY_BITS) - 1)) - (1 << (_DAY_BITS - 1))
    return companies[key >> _DAY_BITS], (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def _casts_cleanly(table: pa.Table, parsed: _Parsed) -> bool:
    """Fast path: every column converts to its type (C casts, no regex)."""
    columns = [*_PRICE_OUTPUT, "value_change", "daily_percent_change"]
    numbers = [parsed.floats(c) for c in columns]
    if not parsed.dates()[1] or not all(clean for _, clean in numbers):
        return False
    try:
        volume = pc.cast(table["volume_traded"], pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    finite = all(pc.all(pc.is_finite(n)).as_py() in (True, None) for n, _ in numbers)
    iso = pc.all(pc.equal(pc.utf8_length(table["stock_date"]), 10)).as_py() in (True, None)
    # "-0" casts to 0: a sign is never part of a volume (the slow path's pattern says so too).
    unsigned = not pc.any(pc.starts_with(table["volume_traded"], "-")).as_py()
    return bool(finite and iso and unsigned and (pc.min(volume).as_py() or 0) >= 0)


def format_problems(table: pa.Table, parsed: _Parsed | None = None) -> dict[str, Finding]:
    """Per column, values that are not what the spec's format says (empty dict: all good)."""
    parsed = parsed or _Parsed(table)
    if _casts_cleanly(table, parsed):
        return {}
    problems: dict[str, Finding] = {}

    def bad(column: str, ok: pa.Array) -> None:
        ok = pc.fill_null(ok, False)
        n = table.num_rows - (pc.sum(ok).as_py() or 0)
        if n:
            problems[column] = Finding(int(n), _examples(table, pc.invert(ok), [column]))

    dates = table["stock_date"]
    bad(
        "stock_date",
        pc.and_(
            pc.match_substring_regex(dates, r"^\d{4}-\d{2}-\d{2}$"),
            pc.equal(pc.strftime(parsed.dates()[0], format="%Y-%m-%d"), dates),
        ),
    )

    def number(column: str) -> pa.ChunkedArray:
        # parsed.floats nulls what does not match _NUMBER, so finite means both.
        return pc.is_finite(parsed.floats(column)[0])

    for column in [*_PRICE_OUTPUT, "value_change"]:
        bad(column, number(column))
    percent = table["daily_percent_change"]
    bad("daily_percent_change", pc.or_kleene(pc.is_null(percent), number("daily_percent_change")))
    bad("volume_traded", pc.match_substring_regex(table["volume_traded"], r"^\d+$"))
    return problems


def _floats(parsed: _Parsed) -> dict[str, pa.ChunkedArray]:
    """The four prices as float64; a value that is not a number is null (formats_valid
    reports it)."""
    return {
        raw: parsed.floats(out)[0] for raw, out in zip(PRICE_COLUMNS, _PRICE_OUTPUT, strict=True)
    }


def open_zero_rows(table: pa.Table, parsed: _Parsed | None = None) -> Finding:
    opens = (parsed or _Parsed(table)).floats("open_value")[0]
    mask = pc.fill_null(pc.equal(opens, 0.0), False)
    return Finding(
        int(pc.sum(mask).as_py() or 0), _examples(table, mask, ["company_name", "stock_date"])
    )


def ohlc_inconsistencies(table: pa.Table, parsed: _Parsed | None = None) -> Finding:
    """Open or Close outside Low..High (the real data's decimal-shift rows). Flagged, kept."""
    if table.num_rows == 0:
        return Finding(0)
    f = _floats(parsed or _Parsed(table))
    outside = pc.or_(
        pc.or_(pc.less(f["Open"], f["Low"]), pc.greater(f["Open"], f["High"])),
        pc.or_(pc.less(f["Close"], f["Low"]), pc.greater(f["Close"], f["High"])),
    )
    # Open = 0 is its own finding (the source's marker for a missing open), not a shift.
    outside = pc.and_(outside, pc.not_equal(f["Open"], 0.0))
    columns = ["company_name", "stock_date", *_PRICE_OUTPUT]
    return Finding(int(pc.sum(outside).as_py() or 0), _examples(table, outside, columns))


def zero_volume_rows(table: pa.Table, parsed: _Parsed | None = None) -> Finding:
    """Rows whose volume is "0", compared as text (`parsed` is not needed; it is accepted so
    that every finding is called the same way)."""
    mask = pc.equal(table["volume_traded"], "0")
    return Finding(
        int(pc.sum(mask).as_py() or 0), _examples(table, mask, ["company_name", "stock_date"])
    )


def _merge(total: Finding | None, part: Finding) -> Finding:
    if total is None:
        return Finding(part.count, part.examples[:EXAMPLES])
    examples = (total.examples + part.examples)[:EXAMPLES]
    return Finding(total.count + part.count, examples)


class OutputProfile:
    """The output's row-level findings, gathered batch by batch while the output is being made.

    `add` each batch in output order (a worker thread can do it: the Arrow and numpy work
    releases the GIL); once the last is in, `findings`, `format_problems` and
    `duplicates(table)` hold the same counts and first examples the whole-table functions give.

    Duplicate keys are counted batch by batch too, while no company has rows in two batches
    (the pipeline's batches hold whole files, one company each): then no key can repeat across
    batches, and the end of the run does not wait for a sort of every key. Once a company spans
    batches, `duplicates` sorts all the keys gathered on the way instead. `shared_companies`:
    the companies more than one input file feeds (the pipeline knows them from the file names);
    when there are none, no company can span batches and the keys (8 bytes a row, the bulk of a
    run's growth with its input) are not kept. None: not known, keep them.
    """

    ROW_FINDINGS = {
        "open_zero_rows": open_zero_rows,
        "ohlc_consistency": ohlc_inconsistencies,
        "zero_volume": zero_volume_rows,
    }

    def __init__(self, shared_companies: set[str] | None = None) -> None:
        self._keep_keys = shared_companies is None or bool(shared_companies)
        self.rows = 0
        self.findings: dict[str, Finding] = {name: Finding(0) for name in self.ROW_FINDINGS}
        self.format_problems: dict[str, Finding] = {}
        self.rows_per_year: Counter[str] = Counter()
        self._company_ids: dict[str, int] = {}
        self._keys: list[np.ndarray] = []
        self._companies_seen: set[str] = set()
        self._duplicates: Finding | None = Finding(0)  # None: a company spans batches

    def add(self, batch: pa.Table) -> None:
        parsed = _Parsed(batch)
        for name, finding in self.ROW_FINDINGS.items():
            self.findings[name] = _merge(self.findings[name], finding(batch, parsed))
        for column, problem in format_problems(batch, parsed).items():
            self.format_problems[column] = _merge(self.format_problems.get(column), problem)
        self.rows_per_year.update(rows_per_year(batch))
        keys = _row_keys(batch, self._company_ids, self.rows, parsed)
        if self._keep_keys:
            self._keys.append(keys)
        self.rows += batch.num_rows
        if self._duplicates is not None:
            companies = set(pc.unique(batch["company_name"]).to_pylist())
            if companies.isdisjoint(self._companies_seen):
                self._duplicates = _merge(self._duplicates, _duplicates_among(batch, keys))
                self._companies_seen |= companies
            else:
                self._duplicates = None

    def duplicates(self, table: pa.Table | None = None) -> Finding:
        """Duplicate keys of everything added (`table`, if given, must be those rows)."""
        if table is not None and self.rows != table.num_rows:
            raise ValueError(f"{self.rows} rows profiled, the table has {table.num_rows}")
        if self._duplicates is not None:
            return self._duplicates
        if not self._keep_keys:
            raise RuntimeError("a company spans batches, but none was expected to: keys not kept")
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, np.int64)
        return _duplicates_among(None, keys, {i: name for name, i in self._company_ids.items()})

    def detached(self) -> OutputProfile:
        """The same conclusions without the per-row keys: small enough to pass between
        processes (the sharded mode's steps)."""
        summary = OutputProfile()
        summary.rows, summary.rows_per_year = self.rows, self.rows_per_year
        summary.findings, summary.format_problems = self.findings, self.format_problems
        summary._duplicates = self.duplicates()
        return summary

    @classmethod
    def merged(cls, parts: Iterable[OutputProfile]) -> OutputProfile:
        """One profile of outputs that share no company (the shards'): every count adds up,
        duplicate keys included (a key holds its company). Examples: the first parts' first."""
        total = cls()
        for part in parts:
            total.rows += part.rows
            total.rows_per_year.update(part.rows_per_year)
            for name, finding in part.findings.items():
                total.findings[name] = _merge(total.findings[name], finding)
            for column, problem in part.format_problems.items():
                total.format_problems[column] = _merge(total.format_problems.get(column), problem)
            total._duplicates = _merge(total._duplicates, part.duplicates())
        return total


def rejects_by_reason(rows: Iterable[RejectedRow]) -> dict[str, int]:
    """Reasons grouped by their kind (the text before any ':' detail)."""
    return dict(Counter(r.reason.split(":")[0] for r in rows).most_common())


def rows_per_year(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    # value_counts, not group_by: group_by loads Arrow's query engine (pyarrow.acero) just for this
    years = pc.value_counts(pc.utf8_slice_codeunits(table["stock_date"], 0, 4))
    values, counts = years.field("values").to_pylist(), years.field("counts").to_pylist()
    return dict(sorted(zip(values, counts, strict=True)))


def markdown_bar_chart(counts: dict[str, int], label: str, width: int = 40) -> str:
    """A text bar chart that renders anywhere Markdown does (the Dagster UI included)."""
    if not counts:
        return "no rows"
    top = max(counts.values())
    lines = [f"| {label} | rows | |", "|---|---:|---|"]
    for key, value in counts.items():
        bar = "█" * max(1, round(width * value / top)) if value else ""
        lines.append(f"| {key} | {value:,} | `{bar}` |")
    return "\n".join(lines)


# --- content checksum: the same number from the CSV's bytes and from the table's rows ---------
# Order-independent: the sum over lines of a per-line hash, so equal multisets of lines give
# equal sums. CRC-32 where the server has crc32() (PostgreSQL 18+), MD5's first 64 bits before.


def _md5_64(line: bytes) -> int:
    return int.from_bytes(hashlib.md5(line).digest()[:8], "big", signed=True)  # noqa: S324


# zlib.crc32 itself, no wrapper: mapped over two million lines, each extra Python call costs.
LINE_HASHES = {"crc32": zlib.crc32, "md5": _md5_64}


def checksum_algorithm(server_version: int) -> str:
    return "crc32" if server_version >= 180000 else "md5"


def line_checksum(lines: Iterable[bytes], algorithm: str = "crc32") -> int:
    return sum(map(LINE_HASHES[algorithm], lines))


class ChecksummingReader:
    """Wraps the CSV stream fed to COPY and checksums exactly the bytes that were loaded.

    CRC-32 always (the CSV asset records that one); `server_algorithm` too when the server needs
    another to compute the same sum over the table.
    """

    def __init__(self, stream: IO[bytes], server_algorithm: str = "crc32") -> None:
        self._stream = stream
        self._tail = b""
        self.server_algorithm = server_algorithm
        self.checksums = dict.fromkeys({"crc32", server_algorithm}, 0)
        self.lines = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if not data:
            if self._tail:  # last line without a newline
                self._add([self._tail])
                self._tail = b""
            return data
        lines = data.split(b"\n")  # not (tail + data): that would copy every chunk once more
        lines[0] = self._tail + lines[0]
        self._tail = lines.pop()
        self._add(lines)
        return data

    def _add(self, lines: list[bytes]) -> None:
        for algorithm in self.checksums:
            self.checksums[algorithm] += line_checksum(lines, algorithm)
        self.lines += len(lines)


_ROW_AS_TEXT = """concat_ws(',',
    stock_date, open_value, high_value, low_value, close_value, volume_traded,
    coalesce(daily_percent_change, ''), value_change, company_name)"""

_TABLE_HASHES = {
    "crc32": "crc32({line})",
    "md5": "('x' || left(md5({line}), 16))::bit(64)::bigint",
}


def table_checksum_sql(algorithm: str, server_encoding: str = "UTF8") -> str:
    """The row count and the same sum on the server, each row printed as its CSV line (NULL →
    empty) in UTF-8, in one scan of the table."""
    # A UTF-8 database's text already is those bytes: textsend hands them over without the
    # conversion convert_to makes (a tenth of the scan).
    line = (
        f"textsend({_ROW_AS_TEXT})"
        if server_encoding == "UTF8"
        else f"convert_to({_ROW_AS_TEXT}, 'UTF8')"
    )
    hashed = _TABLE_HASHES[algorithm].format(line=line)
    return f"SELECT count(*), coalesce(sum({hashed}), 0) FROM {{table}}"
