"""The benchmark's source data: the real files plus a deterministic synthetic rest of `Stocks/`.

The real archive holds the 1,000 files the filter names. The full source set has 7,195 files
(`stocks_manifest.csv`: name, bytes, data rows); the other 6,195 are synthesised here with the
manifest's names, row counts and (closely) byte sizes, so the bucket listing, the filter lookup
and S3 hold what a real course bucket holds. They are never read by the job (the filter does not
name them), so only their names and sizes matter, but they look like real files anyway: business
days up to 2017-11-10, a random walk of prices, OHLC consistent, an `OpenInt` of 0.

Everything is deterministic (seeded by the file name), so every run builds the same bucket.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from stock_assets.bucket_layout import ARCHIVE_NAME, FILTER_NAME, stock_files
from stock_assets.pipeline.companies import parse_company_filter

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MANIFEST_NAME = "stocks_manifest.csv"
HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"
LAST_DAY = np.datetime64("2017-11-10")
# Bytes of a data line that are not prices or volume: date, six commas, "0" (OpenInt), newline.
_FIXED_LINE_BYTES = 18


@dataclass(frozen=True)
class DataSource:
    """Where the real data comes from, and what to say about it."""

    directory: Path
    note: str

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_NAME

    @property
    def filter_bytes(self) -> bytes:
        return (self.directory / FILTER_NAME).read_bytes()


def find_data_source() -> DataSource:
    """`../shared/data` when it holds the archive (the reference copy), else the project's own
    `data/`; says which, as the data README asks."""
    if (SHARED_DATA / ARCHIVE_NAME).exists() and (SHARED_DATA / MANIFEST_NAME).exists():
        return DataSource(SHARED_DATA, f"real files from {SHARED_DATA}")
    own = REPO_ROOT / "data"
    if (own / ARCHIVE_NAME).exists():
        return DataSource(own, f"real files from the project's {own} ({SHARED_DATA} not present)")
    raise FileNotFoundError(f"no {ARCHIVE_NAME} in {SHARED_DATA} or {own}")


@dataclass(frozen=True)
class ManifestEntry:
    file_name: str
    bytes: int
    rows: int


def read_manifest(source: DataSource) -> list[ManifestEntry]:
    path = source.directory / MANIFEST_NAME
    if not path.exists():
        path = REPO_ROOT / "data" / MANIFEST_NAME
    with path.open(newline="") as handle:
        return [
            ManifestEntry(row["file_name"], int(row["bytes"]), int(row["data_rows"]))
            for row in csv.DictReader(handle)
        ]


def filter_names(source: DataSource) -> list[str]:
    return parse_company_filter(source.filter_bytes).files


def real_files(source: DataSource, names: set[str] | None = None) -> dict[str, bytes]:
    """The real files (all, or those in `names`), by file name."""
    return {
        name: data for name, data in stock_files(source.directory) if names is None or name in names
    }


def _rng(name: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), salt])


def synthetic_file(entry: ManifestEntry) -> bytes:
    """A plausible stock file with the manifest's row count and about its byte size."""
    if entry.rows == 0 or entry.bytes == 0:
        return b""
    rng = _rng(entry.file_name)
    # Share the line's variable bytes between 4 prices and the volume to match the size.
    variable = (entry.bytes - len(HEADER)) / entry.rows - _FIXED_LINE_BYTES
    price_chars = int(np.clip(round((variable - 5) / 4), 4, 9))
    volume_digits = int(np.clip(round(variable - 4 * price_chars), 1, 10))
    decimals = int(np.clip(price_chars - 3, 2, 4))
    int_digits = max(1, price_chars - 1 - decimals)

    n = entry.rows
    calendar = np.arange(LAST_DAY - (n * 7 // 5 + 14), LAST_DAY + 1)
    dates = calendar[np.is_busday(calendar)][-n:]
    start = 10.0 ** (int_digits - 1) * rng.uniform(1.5, 8.0)
    close = start * np.exp(np.cumsum(rng.normal(0.0, 0.02, n)))
    close = np.clip(close, 10.0 ** (int_digits - 1), 10.0**int_digits * 0.999)
    open_ = np.clip(close * np.exp(rng.normal(0.0, 0.01, n)), 0.01, None)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.01, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.01, n)))
    volume = (10.0 ** (volume_digits - 1) * rng.uniform(1.0, 9.99, n)).astype(np.int64)

    def text(values: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(np.round(values, decimals)), pa.string())

    table = pa.table(
        {
            "Date": pa.array(dates.astype(str)),
            "Open": text(open_),
            "High": text(high),
            "Low": text(low),
            "Close": text(close),
            "Volume": pc.cast(pa.array(volume), pa.string()),
            "OpenInt": pa.repeat(pa.scalar("0"), n),
        }
    )
    sink = io.BytesIO()
    pv.write_csv(table, sink, pv.WriteOptions(include_header=False, quoting_style="none"))
    return HEADER + sink.getvalue()


def synthetic_files(entries: list[ManifestEntry]) -> Iterator[tuple[str, bytes]]:
    for entry in entries:
        yield entry.file_name, synthetic_file(entry)


def enlarged_name(file_name: str, factor: int) -> str:
    """`tmusp.us.csv` → `tmusp-x2.us.csv`: its own company, so no duplicate keys."""
    stem, _, rest = file_name.partition(".")
    return f"{stem}-x{factor}.{rest}"


def enlarge(data: bytes, factor: int) -> bytes:
    """The file `factor` times as long: earlier copies of its rows, each moved back in time by the
    file's span, so dates stay unique and ascending and every value is a real one."""
    if factor == 1 or not data.strip():
        return data
    header, _, body = data.partition(b"\n")
    lines = body.rstrip(b"\n").split(b"\n")
    dates = np.array([line[:10].decode() for line in lines], dtype="datetime64[D]")
    span = (dates[-1] - dates[0]).astype(int) + 1
    out = [header + b"\n"]
    for copy in range(factor - 1, -1, -1):
        shifted = (dates - copy * span).astype(str)
        out.extend(d.encode() + line[10:] + b"\n" for d, line in zip(shifted, lines, strict=True))
    return b"".join(out)


def filter_file(names: list[str]) -> bytes:
    """A filter file in the course's format: one line of quoted names."""
    return ", ".join(f"'{name}'" for name in names).encode()
