"""The output table built from validated raw rows: the nine text columns, including the two
derived ones (value_change = Close − Open, daily_percent_change = change / Open × 100).

Both the general path (`validate`) and the typed fast path (`fast_path`) end here, so the two
derived columns and the test of which rows a double cannot hold are computed in one place, and
both paths give the same output for the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from stock_assets.pipeline.columns import OUTPUT_SCHEMA, PRICE_COLUMNS
from stock_assets.pipeline.floats import format_floats, repr_of_prices, repr_of_volumes


def chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array, for the numpy views and byte-level tests downstream."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def overflowing_rows(floats: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
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


def output_table(
    raw: pa.Table, floats: list[pa.Array], volume: pa.Array, company: pa.Array
) -> tuple[pa.Table, np.ndarray]:
    """The nine output columns as text, from validated raw text plus its parsed numbers; and
    which rows have Open = 0."""
    open_np, close_np = floats[0].to_numpy(), floats[3].to_numpy()
    open_zero = open_np == 0.0
    # Overflowing rows are rejected before output (see `overflowing_rows`); a batch may still
    # compute them here before the fast path turns it down.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        change_np = close_np - open_np
        # (Close − Open) / Open × 100; undefined where Open is 0, so that field stays empty.
        percent_np = change_np / open_np * 100.0
    percent = pa.array(percent_np, type=pa.float64(), mask=open_zero if open_zero.any() else None)
    columns = [
        chunk(raw["Date"]),
        *(
            repr_of_prices(chunk(raw[name]), values)
            for name, values in zip(PRICE_COLUMNS, floats, strict=True)
        ),
        repr_of_volumes(chunk(raw["Volume"]), volume),
        format_floats(percent),
        format_floats(pa.array(change_np, type=pa.float64())),
        company,
    ]
    return pa.Table.from_arrays(columns, schema=OUTPUT_SCHEMA), open_zero
