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
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stock_assets.pipeline.transform import PRICE_COLUMNS, RejectedRow

EXAMPLES = 5
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


def duplicate_keys(table: pa.Table) -> Finding:
    """(company_name, stock_date) pairs that occur more than once."""
    if table.num_rows == 0:
        return Finding(0)
    # Integer keys (company index × days) sort far faster than two string columns.
    company = pc.dictionary_encode(table["company_name"]).combine_chunks().indices
    days = pc.cast(pc.cast(table["stock_date"], pa.date32()), pa.int32())
    keys = company.to_numpy().astype(np.int64) * 1_000_000 + days.to_numpy()
    unique, counts = np.unique(keys, return_counts=True)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated) == 0:
        return Finding(0)
    mask = pa.array(np.isin(keys, unique[repeated]))
    examples = list(dict.fromkeys(_examples(table, mask, ["company_name", "stock_date"])))
    return Finding(int((counts[repeated] - 1).sum()), examples)


def _casts_cleanly(table: pa.Table) -> bool:
    """Fast path: every column converts to its type (C casts, no regex)."""
    try:
        dates = pc.cast(table["stock_date"], pa.date32())
        numbers = [
            pc.cast(table[c], pa.float64())
            for c in [*_PRICE_OUTPUT, "value_change", "daily_percent_change"]
        ]
        volume = pc.cast(table["volume_traded"], pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    finite = all(pc.all(pc.is_finite(n)).as_py() in (True, None) for n in numbers)
    iso = pc.all(pc.equal(pc.utf8_length(table["stock_date"]), 10)).as_py() in (True, None)
    return bool(finite and iso and dates is not None and (pc.min(volume).as_py() or 0) >= 0)


def format_problems(table: pa.Table) -> dict[str, Finding]:
    """Per column, values that are not what the spec's format says (empty dict: all good)."""
    if _casts_cleanly(table):
        return {}
    problems: dict[str, Finding] = {}

    def bad(column: str, ok: pa.Array) -> None:
        ok = pc.fill_null(ok, False)
        n = table.num_rows - (pc.sum(ok).as_py() or 0)
        if n:
            problems[column] = Finding(int(n), _examples(table, pc.invert(ok), [column]))

    dates = table["stock_date"]
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    bad(
        "stock_date",
        pc.and_(
            pc.match_substring_regex(dates, r"^\d{4}-\d{2}-\d{2}$"),
            pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), dates),
        ),
    )
    number = r"^-?(\d+\.\d+(e[-+]\d+)?|\d(\.\d+)?e[-+]\d+)$"
    for column in [*_PRICE_OUTPUT, "value_change"]:
        bad(column, pc.match_substring_regex(table[column], number))
    percent = table["daily_percent_change"]
    bad(
        "daily_percent_change",
        pc.or_kleene(pc.is_null(percent), pc.match_substring_regex(percent, number)),
    )
    bad("volume_traded", pc.match_substring_regex(table["volume_traded"], r"^\d+$"))
    return problems


def _floats(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {
        raw: pc.cast(table[out], pa.float64())
        for raw, out in zip(PRICE_COLUMNS, _PRICE_OUTPUT, strict=True)
    }


def open_zero_rows(table: pa.Table) -> Finding:
    mask = pc.equal(pc.cast(table["open_value"], pa.float64()), 0.0)
    return Finding(
        int(pc.sum(mask).as_py() or 0), _examples(table, mask, ["company_name", "stock_date"])
    )


def ohlc_inconsistencies(table: pa.Table) -> Finding:
    """Open or Close outside Low..High (the real data's decimal-shift rows). Flagged, kept."""
    if table.num_rows == 0:
        return Finding(0)
    f = _floats(table)
    outside = pc.or_(
        pc.or_(pc.less(f["Open"], f["Low"]), pc.greater(f["Open"], f["High"])),
        pc.or_(pc.less(f["Close"], f["Low"]), pc.greater(f["Close"], f["High"])),
    )
    # Open = 0 is its own finding (the source's marker for a missing open), not a shift.
    outside = pc.and_(outside, pc.not_equal(f["Open"], 0.0))
    columns = ["company_name", "stock_date", *_PRICE_OUTPUT]
    return Finding(int(pc.sum(outside).as_py() or 0), _examples(table, outside, columns))


def zero_volume_rows(table: pa.Table) -> Finding:
    mask = pc.equal(table["volume_traded"], "0")
    return Finding(
        int(pc.sum(mask).as_py() or 0), _examples(table, mask, ["company_name", "stock_date"])
    )


def rejects_by_reason(rows: Iterable[RejectedRow]) -> dict[str, int]:
    """Reasons grouped by their kind (the text before any ':' detail)."""
    return dict(Counter(r.reason.split(":")[0] for r in rows).most_common())


def rows_per_year(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    years = pc.utf8_slice_codeunits(table["stock_date"], 0, 4)
    counts = pa.table({"year": years}).group_by("year").aggregate([([], "count_all")])
    return dict(
        sorted(zip(counts["year"].to_pylist(), counts["count_all"].to_pylist(), strict=True))
    )


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
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        self._add(lines)
        return data

    def _add(self, lines: list[bytes]) -> None:
        for algorithm in self.checksums:
            self.checksums[algorithm] += line_checksum(lines, algorithm)
        self.lines += len(lines)


_ROW_AS_CSV_LINE = """convert_to(concat_ws(',',
    stock_date, open_value, high_value, low_value, close_value, volume_traded,
    coalesce(daily_percent_change, ''), value_change, company_name), 'UTF8')"""

_TABLE_HASHES = {
    "crc32": f"crc32({_ROW_AS_CSV_LINE})",
    "md5": f"('x' || left(md5({_ROW_AS_CSV_LINE}), 16))::bit(64)::bigint",
}


def table_checksum_sql(algorithm: str) -> str:
    """The same sum on the server, each row printed as its CSV line (NULL → empty)."""
    return f"SELECT coalesce(sum({_TABLE_HASHES[algorithm]}), 0) FROM {{table}}"
