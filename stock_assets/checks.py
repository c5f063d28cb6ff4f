"""Asset checks: what was validated on every run, what passed, what was rejected.

The checks are computed inside the assets from the data they already hold (no second read), so
a blocking check stops the write it guards: a failing CSV check means the output object is not
replaced, and the table checks run inside the load transaction, before COMMIT. Warnings never
block; they report counts and examples of the real data's defects.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    FreshnessPolicy,
    MetadataValue,
)

from stock_assets.pipeline.quality import Finding

TOP_COMPANIES = AssetKey("top_companies")
CSV = AssetKey("historical_stock_data_csv")
TABLE = AssetKey("historical_stocks_data")


def _spec(asset: AssetKey, name: str, description: str, blocking: bool) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=asset, description=description, blocking=blocking)


TOP_COMPANIES_CHECKS = [
    _spec(TOP_COMPANIES, "filter_file_valid",
          "Filter file exists, is non-empty text, names at most max_files valid .csv files "
          "(warns when some entries are not usable file names: they are dropped).", True),
    _spec(TOP_COMPANIES, "filter_names_have_files",
          "Every name in the filter has a file under Stocks/ (warns otherwise).", False),
]  # fmt: skip

CSV_CHECKS = [
    _spec(CSV, "input_limits",
          "At most max_files files, each at most max_file_bytes; checked before any read.", True),
    _spec(CSV, "files_reconcile",
          "Files listed → selected → read + skipped: every selected file is accounted for.", True),
    _spec(CSV, "rows_reconcile", "Rows read = rows written + rows rejected.", True),
    _spec(CSV, "no_duplicate_keys", "No (company_name, stock_date) twice in the CSV.", True),
    _spec(CSV, "formats_valid",
          "ISO dates, numeric prices and changes, non-negative integer volume.", True),
    _spec(CSV, "rejected_rows",
          "Rows rejected with a reason; warns if any, blocks above max_reject_fraction.", True),
    _spec(CSV, "skipped_files", "Empty, unreadable or missing files (warns, never blocks).", False),
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


def result(
    asset: AssetKey,
    name: str,
    passed: bool,
    metadata: dict[str, Any] | None = None,
    *,
    blocking: bool = True,
    description: str | None = None,
) -> AssetCheckResult:
    """A check result; a failure is an ERROR when the check blocks, else a WARN. A failure's
    description defaults to its metadata's "problem" (the UI and the run's email show it)."""
    metadata = metadata or {}
    if description is None and not passed and "problem" in metadata:
        problem = metadata["problem"]
        description = str(getattr(problem, "value", problem))
    return AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=passed,
        severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )


def finding_result(asset: AssetKey, name: str, finding: Finding, **extra: Any) -> AssetCheckResult:
    """A non-blocking warning that passes when nothing was found."""
    metadata: dict[str, Any] = {"count": finding.count, **extra}
    if finding.examples:
        shown = finding.examples[:10]
        metadata["examples"] = MetadataValue.md("\n".join(f"- {e}" for e in shown))
    return result(asset, name, not finding.found, metadata, blocking=False)


# The pipeline runs at most daily: the table is stale (WARN) after ~26 h, i.e. one missed day,
# and failing after two. Dagster's daemon evaluates this; no sensor is needed.
TABLE_FRESHNESS = FreshnessPolicy.time_window(
    warn_window=timedelta(hours=26), fail_window=timedelta(hours=50)
)
