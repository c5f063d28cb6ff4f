"""What the pipeline concludes about its own output: one `Verdict` per check, Dagster-free.

The pipeline needs the verdicts itself (a blocking failure means the CSV is not published and the
table load rolls back), so they are made here, from the data in hand. `stock_assets.checks` only
turns them into Dagster's `AssetCheckResult`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stock_assets.pipeline.combine import CombinedOutput
from stock_assets.pipeline.companies import CompanyFilter
from stock_assets.pipeline.quality import Finding, OutputProfile, rejects_by_reason
from stock_assets.pipeline.records import FileResult


@dataclass
class Verdict:
    """One check's outcome. A failed `blocking` check stops the write it guards; a failed
    non-blocking one is a warning. `metadata["problem"]`, when present, says what is wrong."""

    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True
    # Metadata entries (lists of examples) best shown as a bulleted list rather than JSON.
    bulleted: tuple[str, ...] = ()

    @property
    def stops_the_run(self) -> bool:
        return self.blocking and not self.passed

    @property
    def problem(self) -> str | None:
        return self.metadata.get("problem")


def warning(name: str, finding: Finding, **extra: Any) -> Verdict:
    """A non-blocking check that passes when nothing was found; lists a few examples."""
    metadata: dict[str, Any] = {"count": finding.count, **extra}
    if finding.examples:
        metadata["examples"] = finding.examples[:10]
    return Verdict(name, not finding.found, metadata, blocking=False, bulleted=("examples",))


def input_limits(
    files: int,
    max_files: int,
    max_file_bytes: int,
    oversized: list[tuple[str, int]] = (),  # type: ignore[assignment]
    largest_bytes: int = 0,
) -> Verdict:
    """Each file at most `max_file_bytes` (each GET's Content-Length, checked before its body is
    used). The count is only a backstop: `read_filter` already refuses a filter naming more than
    `max_files` files (the `filter_file_valid` check), so in a run this verdict does not fail on
    it."""
    metadata: dict[str, Any] = {
        "files": files,
        "max_files": max_files,
        "largest_bytes": largest_bytes,
        "max_file_bytes": max_file_bytes,
    }
    if files > max_files:
        metadata["problem"] = f"{files} files selected; the limit is {max_files}"
    elif oversized:
        listed = ", ".join(f"{name} ({size} bytes)" for name, size in oversized[:10])
        metadata["problem"] = (
            f"{len(oversized)} selected files exceed the {max_file_bytes}-byte limit: {listed}. "
            "Nothing was published. Raise max_file_bytes if these files are expected."
        )
        metadata["oversized_files"] = [name for name, _ in oversized]
    return Verdict("input_limits", "problem" not in metadata, metadata)


def csv_verdicts(
    combined: CombinedOutput,
    profile: OutputProfile,
    files_selected: int,
    skipped: list[FileResult],
    rejects: dict[str, str],
    max_reject_fraction: float,
) -> tuple[list[Verdict], int]:
    """Every check on the CSV, from the output and the findings gathered while it was written;
    also the number of duplicate keys (the table's duplicate check is proved from it)."""
    rows, rejected = combined.rows_written, combined.rows_rejected
    read_ok = combined.files_read
    duplicates = profile.duplicates()
    formats = profile.format_problems
    reject_share = rejected / combined.rows_read if combined.rows_read else 0.0
    by_reason = rejects_by_reason(combined.rejected_rows)
    upstream_duplicates = sum(n for r, n in by_reason.items() if r.startswith("duplicate"))
    skipped_files = warning(
        "skipped_files",
        Finding(len(skipped), [f"{f.file_name}: {f.skip_reason}" for f in skipped]),
        kept_at=rejects.get("skipped_files", "none"),
    )
    if skipped and not read_ok:  # an empty CSV would replace the data: a broken input, block
        skipped_files.blocking = True
        skipped_files.metadata["problem"] = (
            f"none of the {files_selected} selected files could be read "
            f"(first: {skipped[0].file_name}: {skipped[0].skip_reason})"
        )
    verdicts = [
        Verdict("files_reconcile", read_ok + len(skipped) == files_selected, {
            "files_selected": files_selected, "files_read": read_ok,
            "files_skipped": len(skipped),
        }),
        Verdict("rows_reconcile", combined.rows_read == rows + rejected, {
            "rows_read": combined.rows_read, "rows_written": rows, "rows_rejected": rejected,
        }),
        Verdict("no_duplicate_keys", not duplicates.found, {
            "duplicates": duplicates.count,
            "examples": duplicates.examples,
            "duplicates_rejected_upstream": upstream_duplicates,
        }),
        Verdict("formats_valid", not formats, {
            "rows_checked": rows,
            "problems": {c: {"count": f.count, "examples": f.examples} for c, f in formats.items()},
            "rows_rejected_for_format_upstream": sum(by_reason.values()) - upstream_duplicates,
        }),
        # A few bad rows are the source's normal state: warn. Many mean a broken input: block.
        Verdict("rejected_rows", rejected == 0, {
            "count": rejected,
            "share_of_rows_read": round(reject_share, 6),
            "max_reject_fraction": max_reject_fraction,
            "by_reason": by_reason,
            "examples": [f"{r.file_name}:{r.line} {r.reason}" for r in combined.rejected_rows[:10]],
            "kept_at": rejects.get("rejected_rows", "none"),
        }, blocking=reject_share > max_reject_fraction),
        skipped_files,
        *(warning(name, found) for name, found in profile.findings.items()),
    ]  # fmt: skip
    return verdicts, duplicates.count


def filter_file_valid(company_filter: CompanyFilter, max_files: int) -> Verdict:
    """The filter was usable. Unusable entries are dropped and the rest is read: a warning
    naming them, not a stop."""
    invalid = [f"{i.entry!r}: {i.reason}" for i in company_filter.invalid]
    metadata: dict[str, Any] = {
        "entries": company_filter.entries,
        "files_selected": len(company_filter.files),
        "max_files": max_files,
        "duplicates_dropped": len(company_filter.duplicates),
        "invalid_entries": len(invalid),
        "invalid_examples": invalid[:20],
    }
    if invalid:
        metadata["problem"] = (
            f"{len(invalid)} entries are not usable file names and were dropped: "
            + "; ".join(invalid[:5])
        )
    return Verdict("filter_file_valid", not invalid, metadata, blocking=not invalid)
