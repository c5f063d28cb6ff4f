"""Asset checks: their specs, and the mapping from the pipeline's verdicts to check results.

The verdicts are made by the pipeline from the data it already holds (no second read), so a
blocking check stops the write it guards: a failing CSV check means the output object is not
replaced, and the table checks run inside the load transaction, before COMMIT. Warnings never
block; they report counts and examples of the real data's defects.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
)

from stock_assets.metadata import CSV, TABLE, TOP_COMPANIES, md_text
from stock_assets.pipeline.verdicts import Verdict


def _spec(asset: AssetKey, name: str, description: str, blocking: bool) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=asset, description=description, blocking=blocking)


TOP_COMPANIES_CHECKS = [
    _spec(TOP_COMPANIES, "filter_file_valid",
          "Filter file exists, is non-empty text, names at most max_files valid .csv files "
          "(warns when some entries are not usable file names: they are dropped).", True),
]  # fmt: skip

CSV_CHECKS = [
    _spec(CSV, "input_limits",
          "Each file at most max_file_bytes (on each GET's Content-Length, before its body is "
          "used). The file count (max_files) is checked earlier, by filter_file_valid.", True),
    _spec(CSV, "files_reconcile",
          "Files selected = files read + files skipped: every named file is accounted for.", True),
    _spec(CSV, "rows_reconcile", "Rows read = rows written + rows rejected.", True),
    _spec(CSV, "no_duplicate_keys", "No (company_name, stock_date) twice in the CSV.", True),
    _spec(CSV, "formats_valid",
          "ISO dates, numeric prices and changes, non-negative integer volume.", True),
    _spec(CSV, "rejected_rows",
          "Rows rejected with a reason; warns if any, blocks above max_reject_fraction.", True),
    _spec(CSV, "skipped_files",
          "Empty, unreadable or missing files: warns; blocks only when no selected file could "
          "be read (an empty CSV would replace the data).", False),
    _spec(CSV, "open_zero_rows",
          "Rows with Open = 0: kept, percentage left empty (warns).", False),
    _spec(CSV, "ohlc_consistency",
          "Open or Close outside Low..High (decimal-shift rows): flagged, kept (warns).", False),
    _spec(CSV, "zero_volume", "Rows with Volume = 0 (warns).", False),
]  # fmt: skip

TABLE_CHECKS = [
    _spec(TABLE, "table_matches_csv",
          "Inside the load transaction: row count and content checksum equal the CSV's.", True),
    _spec(TABLE, "table_no_duplicate_keys",
          "No (company_name, stock_date) twice in the table.", True),
]  # fmt: skip


def _value(key: str, value: Any, verdict: Verdict) -> Any:
    if key in verdict.bulleted:
        return MetadataValue.md("\n".join(f"- {md_text(item)}" for item in value))
    if isinstance(value, (dict, list, tuple)):
        return MetadataValue.json(value)
    return value


def check_result(asset: AssetKey, verdict: Verdict) -> AssetCheckResult:
    """A verdict as Dagster's check result: a failure is an ERROR when the check blocks, else a
    WARN; its problem is the description (the UI and the run's email show it)."""
    return AssetCheckResult(
        asset_key=asset,
        check_name=verdict.name,
        passed=verdict.passed,
        severity=AssetCheckSeverity.ERROR if verdict.blocking else AssetCheckSeverity.WARN,
        metadata={k: _value(k, v, verdict) for k, v in verdict.metadata.items()},
        description=None if verdict.passed else verdict.problem,
    )
