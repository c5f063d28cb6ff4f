"""Numbers → text exactly as Python's `repr`/`str` write them, computed on whole Arrow columns.

The spec's output writes prices, changes and percentages as Python would print the float
(shortest round-trip digits, `30.0`, `1e-05`) and volumes as Python prints the int. Calling
`repr` per value would be a Python loop over every number, so this module gets the same text
from Arrow casts and numpy masks, and calls `repr` only for the few values where notations differ.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A price written exactly as Python's repr writes it — no leading zeros, a '.', no trailing zero
# (except "X.0") — with at most 15 digits and a value of at least 1e-4 (or 0) *is*
# repr(float(text)): any decimal of <= 15 significant digits round-trips through a double, so
# no shorter string maps to the same double, and repr writes [1e-4, 1e16) without an exponent.
_REPR_LIKE_MAX_CHARS = 16  # 15 digits and the '.'
_DOT, _ZERO = ord("."), ord("0")


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


def repr_of_prices(text: pa.Array, values: pa.Array) -> pa.Array:
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


def repr_of_volumes(text: pa.Array, values: pa.Array) -> pa.Array:
    """str(int(volume)) for each validated volume text (digits only): the text itself unless
    it has leading zeros."""
    if len(text) == 0:
        return text
    offsets, chars = _string_bytes(text)
    as_is = (chars[offsets[:-1]] != _ZERO) | (np.diff(offsets) == 1)
    return text if as_is.all() else pc.cast(values, pa.string())


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
