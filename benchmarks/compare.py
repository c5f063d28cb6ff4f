"""Two outputs of the spec's CSV side by side: their aggregates, and which lines differ and how.

Used to check the DuckDB engine's CSV against ours: equal aggregates (rows, companies,
Σ value_change) can hide a different text of the same numbers, which the spec fixes (Python's
shortest round-trip float repr, an empty percentage where Open = 0), so lines are compared too.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Any

OUTPUT_COLUMNS = [
    "stock_date", "open_value", "high_value", "low_value", "close_value",
    "volume_traded", "daily_percent_change", "value_change", "company_name",
]  # fmt: skip
EXAMPLES = 5


def profile(body: bytes) -> dict[str, Any]:
    """Rows, distinct companies and Σ value_change (exactly rounded, so order does not matter)."""
    import pyarrow as pa
    import pyarrow.csv as pv

    if not body.strip():
        return {"rows": 0, "companies": 0, "value_change_sum": 0.0}
    try:
        table = pv.read_csv(
            io.BytesIO(body),
            read_options=pv.ReadOptions(column_names=OUTPUT_COLUMNS),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(OUTPUT_COLUMNS, pa.string()),
                strings_can_be_null=True,
            ),
        )
        value_change = table["value_change"].cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as err:  # not the spec's nine columns: the line diff says where
        return {"rows": len(body.splitlines()), "unreadable": str(err)[:300]}
    return {
        "rows": table.num_rows,
        "companies": len(set(table["company_name"].unique().to_pylist())),
        "value_change_sum": math.fsum(value_change.tolist()),
    }


def _differing_columns(ours: bytes, other: bytes) -> list[str]:
    a, b = ours.split(b","), other.split(b",")
    if len(a) != len(b):
        return ["(field count)"]
    return [OUTPUT_COLUMNS[i] if i < len(OUTPUT_COLUMNS) else f"#{i}" for i, (x, y) in
            enumerate(zip(a, b, strict=True)) if x != y]  # fmt: skip


def compare(ours: bytes, other: bytes) -> dict[str, Any]:
    """Whether `other` is byte-identical to `ours`; if not, how many lines differ, in which
    columns, with a few examples (line numbers are 1-based, as an editor shows them)."""
    result: dict[str, Any] = {
        "identical": ours == other,
        "bytes": {"ours": len(ours), "other": len(other)},
        "ours": profile(ours),
        "other": profile(other),
    }
    if result["identical"]:
        result.update(lines_differing=0, columns_differing={}, examples=[])
        return result
    a, b = ours.splitlines(), other.splitlines()
    result["lines"] = {"ours": len(a), "other": len(b)}
    if len(a) == len(b):
        differing = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        columns: Counter[str] = Counter()
        for i in differing:
            columns.update(_differing_columns(a[i], b[i]))
        result["lines_differing"] = len(differing)
        result["columns_differing"] = dict(columns.most_common())
        result["examples"] = [
            {"line": i + 1, "ours": a[i].decode(), "other": b[i].decode()}
            for i in differing[:EXAMPLES]
        ]
    else:
        # Different row sets: which lines one has and the other lacks, order aside.
        only_ours, only_other = Counter(a) - Counter(b), Counter(b) - Counter(a)
        result["lines_differing"] = max(sum(only_ours.values()), sum(only_other.values()))
        result["columns_differing"] = {}
        result["examples"] = [
            {"only_in": "ours", "text": line.decode()} for line in list(only_ours)[:EXAMPLES]
        ] + [{"only_in": "other", "text": line.decode()} for line in list(only_other)[:EXAMPLES]]
    if not result["lines_differing"]:
        result["note"] = "same lines, different line endings or trailing bytes"
    return result
