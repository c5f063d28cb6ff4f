"""The benchmark's outputs: JSON (everything) and a Markdown page (the tables people read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def linear_fit(x: list[float], y: list[float]) -> dict[str, float] | None:
    """Least squares y = a + b·x, with r² and the largest relative residual."""
    n = len(x)
    if n < 2 or len(set(x)) < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    sxy = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True))
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((yi - my) ** 2 for yi in y)
    ss_res = sum((yi - (a + b * xi)) ** 2 for xi, yi in zip(x, y, strict=True))
    worst = max(abs(yi - (a + b * xi)) / yi for xi, yi in zip(x, y, strict=True) if yi)
    return {
        "intercept_seconds": round(a, 4),
        "seconds_per_mb": round(b, 5),
        "r2": round(1 - ss_res / ss_tot, 5) if ss_tot else 1.0,
        "max_relative_residual": round(worst, 4),
    }


def files_and_bytes_fit(files: list[float], mb: list[float], y: list[float]) -> dict | None:
    """Least squares y = a + b·files + c·MB: a run's cost has a per-file part (one GET each)
    and a per-byte part (parse, format, write, COPY); linear means both terms explain it."""
    import numpy as np

    if len(y) < 4:
        return None
    x = np.column_stack([np.ones(len(y)), files, mb])
    target = np.asarray(y, dtype=float)
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    predicted = x @ coef
    total = float(((target - target.mean()) ** 2).sum())
    return {
        "intercept_seconds": round(float(coef[0]), 4),
        "seconds_per_file": round(float(coef[1]), 6),
        "seconds_per_mb": round(float(coef[2]), 5),
        "r2": round(1 - float(((target - predicted) ** 2).sum()) / total, 5) if total else 1.0,
        "max_relative_residual": round(float(np.max(np.abs(target - predicted) / target)), 4),
    }


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cpu(summary: dict[str, Any]) -> str:
    cpu = summary.get("cpu_seconds")
    if not cpu:
        return "–"
    parts = " + ".join(f"{cpu[k]:.1f}" for k in ("run_process", "moto", "postgres"))
    return f"{cpu['total']:.1f} ({parts})"


def _figure(value: float | None) -> str:
    """Counts with separators; sums as repr, every digit (equal sums must print equal)."""
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else repr(value)


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def markdown(report: dict[str, Any]) -> str:
    ours, limit = report["ours"]["summary"], report["limit"]["summary"]
    course, ratios, data = report["course"], report["ratios"], report["dataset"]
    cond, verification = report["conditions"], report["verification"]
    rows = verification["rows_written"]
    repeat = report["profile"]["repeat"]
    lines = [
        f"# Benchmark ({report['mode']}): stock_pipeline_job vs the limit proxy, the peers "
        "(DuckDB, dlt, Sling) and the course",
        "",
        f"{report['summary']}",
        "",
        "## Conditions",
        "",
        f"- {report['started_at']}, commit {cond['git_commit']}"
        f"{' (with uncommitted changes)' if cond['git_dirty'] else ''}",
        f"- {cond['cpus']} CPUs ({cond['cpu_model']}), "
        f"{(cond['memory_bytes'] or 0) / 1e9:.0f} GB RAM; load average before "
        f"{cond['load_average_before']}, after {cond['load_average_after']}",
        f"- {', '.join(f'{k} {v}' for k, v in cond['versions'].items() if v)}",
        f"- Local stack: moto server (S3) + embedded PostgreSQL, on the same machine. "
        f"{cond['note']}.",
        f"- Source bucket: {data['objects_under_stocks']:,} objects under `Stocks/` — "
        f"{data['real_files']:,} real ({data['real_bytes'] / 1e6:.1f} MB; {data['source']}) and "
        f"{data['synthetic_files']:,} synthesised from the manifest "
        f"({data['synthetic_bytes'] / 1e6:.1f} MB vs {data['synthetic_manifest_bytes'] / 1e6:.1f} "
        "MB listed); the filter names the real ones.",
        f"- Each figure: median of {repeat} fresh-process runs (the limit proxy, ours and the "
        "DuckDB engine in turn)"
        + (
            f", after {report['profile']['warmup']} untimed warm-up run of each ("
            + ", ".join(f"{w['approach']} {w['run_seconds']:.2f}s" for w in report["warmup_runs"])
            + ")."
            if report.get("warmup_runs")
            else "."
        ),
        "",
        "## Results",
        "",
        "| approach | seconds | rows/s | peak RSS | CPU s (run + moto + postgres) | notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| **ours** (stock_pipeline_job, run only) | {_s(ours['run_seconds'])} | "
        f"{ours['rows_per_second']:,} | {_gb(ours['peak_rss_bytes'])} | {_cpu(ours)} | best "
        f"{_s(ours['run_seconds_min'])}s; + {_s(ours['dagster_overhead']['process_start_seconds'])}"
        "s Dagster process start, not included |",
        f"| limit proxy | {_s(limit['run_seconds'])} | {limit['rows_per_second']:,} | "
        f"{_gb(limit['peak_rss_bytes'])} | {_cpu(limit)} | parallel raw GETs + plain transform "
        "+ COPY into an "
        "unindexed table; best "
        f"{_s(limit['run_seconds_min'])}s |",
    ]
    engine = report["duckdb"]
    if "summary" in engine:
        summary = engine["summary"]
        same = engine["csv_vs_ours"]
        lines.append(
            f"| DuckDB engine | {_s(summary['run_seconds'])} | {summary['rows_per_second']:,} | "
            f"{_gb(summary['peak_rss_bytes'])} | {_cpu(summary)} | httpfs reads, typed SQL "
            "transform, store_rejects, COPY to S3 + postgres extension; best "
            f"{_s(summary['run_seconds_min'])}s; CSV "
            + ("byte-identical to ours |" if same["identical"] else
               f"differs from ours in {same['lines_differing']:,} lines |")
        )  # fmt: skip
    else:
        lines.append(f"| DuckDB engine | – | – | – | – | skipped: {engine['skipped']} |")
    if "run_seconds" in course:
        note = (
            f"**extrapolated**: {course['rows_inserted']:,} of {course['rows_written']:,} rows "
            f"inserted in the {course['insert_budget_seconds']:.0f}s budget at "
            f"{course['insert_rows_per_second']:,.0f} rows/s; measured part "
            f"{course['measured_seconds']:.1f}s"
            if course["extrapolated"]
            else "ran to the end"
        )
        lines.append(
            f"| course approach | {_s(course['run_seconds'], 1)} | "
            f"{round(course['rows_written'] / course['run_seconds']):,} | "
            f"{_gb(course['peak_rss_bytes'])} | {_cpu(course)} | {note} |"
        )
    else:
        lines.append(f"| course approach | – | – | – | – | skipped: {course['skipped']} |")
    lines += [
        "",
        f"- **ours / limit = {ratios['ours_over_limit']:.2f}** (target ≤ "
        f"{report['targets']['ours_over_limit_max']}; best runs "
        f"{ratios['ours_over_limit_best_runs']:.2f}; in CPU seconds "
        f"{ratios['ours_over_limit_cpu']:.2f})",
    ]
    if "course_over_ours" in ratios:
        lines.append(
            f"- **course / ours = {ratios['course_over_ours']:.1f}×** (target ≥ "
            f"{report['targets']['course_over_ours_min']:.0f}×)"
        )
    if "duckdb_over_ours" in ratios:
        lines.append(
            f"- **DuckDB engine / ours = {ratios['duckdb_over_ours']:.2f}** in seconds, "
            f"{ratios['duckdb_over_ours_cpu']:.2f} in CPU seconds; DuckDB engine / limit = "
            f"{ratios['duckdb_over_limit']:.2f}"
        )
    lines += [
        f"- peak RSS of the run process: {_gb(ours['peak_rss_bytes'])} (target ≤ "
        f"{_gb(report['targets']['peak_rss_max_bytes'])})",
        f"- targets met: {report['targets_met']}"
        + (
            " (quick mode: at 40 files the fixed costs dominate; the targets are for the full run)"
            if report["mode"] == "quick"
            else ""
        ),
        f"- verification: ours wrote {rows:,} rows (read {verification['rows_read']:,}); its CSV "
        f"is byte-identical to the limit proxy's (independent code): "
        f"{verification['ours_csv_equals_limit_csv']}; table rows = CSV rows: "
        f"{verification['ours_table_rows_equal_csv']}",
        "",
        "## Where ours spends its time (medians)",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {_s(v, 3)} |" for k, v in ours["per_asset_step_seconds"].items()]
    overhead = ours["dagster_overhead"]
    lines += [
        f"| Dagster: run setup, step launches, bookkeeping (run − Σ steps) | "
        f"{_s(overhead['run_minus_steps_seconds'], 3)} |",
        f"| **run total** | **{_s(ours['run_seconds'], 3)}** |",
        f"| Dagster process start (not in the run) | {_s(overhead['process_start_seconds'], 3)} |",
        "",
        "Inside the `historical_stock_data` step, which makes both the CSV and the table "
        "(the timings the CSV asset records): "
        + (
            ", ".join(f"{k} {_s(v, 3)}" for k, v in ours["csv_asset_phases"].items())
            or "none recorded"
        )
        + "; the table's load (its transaction, as the table asset records it) "
        f"{_s(ours['table_asset_load_seconds'], 3)}s.",
        "",
        "Limit proxy phases: "
        + ", ".join(f"{k} {_s(v, 3)}" for k, v in limit["phases"].items())
        + ".",
    ]
    if "phases" in course:
        lines += [
            "",
            "Course approach phases: "
            + ", ".join(f"{k} {_s(v, 2)}" for k, v in course["phases"].items())
            + f". Its CSV equals ours byte for byte: {course['csv_equals_ours']}.",
        ]
    lines += _peers_section(report)
    lines += _duckdb_section(report)
    scaling = report["scaling"]
    lines += [
        "",
        "## Scaling (ours)",
        "",
        "| files | file size | MB read | rows | seconds | s per MB | CPU s | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in scaling["points"]:
        mb = p["bytes_read"] / 1e6
        lines.append(
            f"| {p['files']} | ×{p['size_factor']} | {mb:.1f} | {p['rows_written']:,} | "
            f"{_s(p['run_seconds'])} | {_s(p['run_seconds'] / mb, 3)} | "
            f"{_s(p['cpu_seconds']['total'], 1)} | {_gb(p['peak_rss_bytes'])} |"
        )
    fit2 = scaling.get("files_and_bytes_fit")
    if fit2:
        lines += [
            "",
            f"Least squares on files and bytes: seconds = {fit2['intercept_seconds']:.2f} + "
            f"{fit2['seconds_per_file'] * 1000:.2f} ms × files + {fit2['seconds_per_mb']:.4f} s × "
            f"MB, r² = {fit2['r2']:.4f}, largest relative residual "
            f"{fit2['max_relative_residual']:.1%}. The intercept is the fixed cost of a run "
            "(reading the filter, step launches, checks); the rest grows linearly with "
            "the files read (one GET each) and the bytes (parse, format, write, COPY).",
        ]
    fit = scaling["fit"]
    if fit:
        lines += [
            "",
            f"On bytes alone: seconds = {fit['intercept_seconds']:.2f} + "
            f"{fit['seconds_per_mb']:.4f} × MB, r² = {fit['r2']:.4f} (the same bytes in fewer, "
            "larger files cost a little less: fewer GETs).",
        ]
    cpu_fit = scaling.get("cpu_fit")
    if cpu_fit:
        lines += [
            "",
            "In CPU seconds (client + moto + PostgreSQL; steadier on a shared machine): "
            f"{cpu_fit['intercept_seconds']:.2f} + {cpu_fit['seconds_per_file'] * 1000:.2f} ms × "
            f"files + {cpu_fit['seconds_per_mb']:.4f} s × MB, r² = {cpu_fit['r2']:.4f}.",
        ]
    lines += ["", f"_{scaling['note']}._", ""]
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return {True: "**yes**", False: "**no**", None: "not assessed (a peer was skipped)"}[value]


def _peers_section(report: dict[str, Any]) -> list[str]:
    """Ours as a user runs it against the peers, each a whole process; then their setups."""
    from benchmarks.peers import PEER_NOTES

    peers, ratios, met = report["peers"], report["ratios"], report["targets_met"]
    ours = peers["ours_cli"]["summary"]
    lines = [
        "",
        "## Ours against the peers, end to end (whole process)",
        "",
        "Each loads the files the filter names from the same bucket into its own table in the "
        "same PostgreSQL, and is measured as a whole process, from spawn to exit: ours as a "
        "user runs it (`dagster job execute`: interpreter start, imports, loading the code "
        "location, the run and its records in DAGSTER_HOME), the others likewise including "
        "their own start-up. CPU seconds: the process tree plus moto and PostgreSQL over the "
        "same interval. Peak RSS: of the process tree. Medians over the same rounds as above, "
        "in alternating order. Each table is checked against ours with SQL: rows, distinct "
        "companies, Σ value_change (as exact `numeric` of each value's shortest text).",
        "",
        "| approach | seconds | × ours | CPU s (process + moto + postgres) | peak RSS | rows | "
        "companies | Σ value_change | same rows as ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in peers:  # ours first, then the peers, in the runner's order
        label = PEER_NOTES[name]["label"]
        peer = peers[name]
        if "summary" not in peer:
            lines.append(f"| {label} | – | – | – | – | – | – | – | skipped: {peer['skipped']} |")
            continue
        summary, table = peer["summary"], peer["table"]
        ratio = "1.00" if name == "ours_cli" else _s(ratios[f"{name}_over_ours_whole_process"])
        same = (
            "(reference)"
            if name == "ours_cli"
            else ("passed" if peer["verification_passed"] else "**FAILED**")
        )
        lines.append(
            f"| {label} | {_s(summary['wall_seconds'])} | {ratio} | "
            f"{_cpu({'cpu_seconds': summary['cpu_seconds']})} | "
            f"{_gb(summary['peak_rss_bytes'])} | {table['rows']:,} | {table['companies']:,} | "
            f"{table['value_change_sum']} | {same} |"
        )
    lines += [
        "",
        f"- ours faster than every peer (medians, whole process): "
        f"{_yes(met.get('ours_faster_than_every_peer'))}",
    ]
    duckdb = peers["duckdb"].get("summary")
    if duckdb:
        lines.append(
            f"- peak RSS: ours {_gb(ours['peak_rss_bytes'])}, DuckDB "
            f"{_gb(duckdb['peak_rss_bytes'])}: "
            f"{ours['peak_rss_bytes'] / duckdb['peak_rss_bytes']:.2f}× DuckDB's (target ≤ 2×): "
            f"{_yes(met.get('peak_rss_within_2x_duckdb'))}"
        )
    dlt = peers.get("dlt", {})
    if "runs" in dlt:
        phases = dlt["runs"][0].get("phases", {})
        lines.append(
            "- dlt's own step timings (first run): "
            + ", ".join(f"{k} {_s(v, 2)}" for k, v in phases.items())
        )
    lines += ["", "### What each peer runs, and what it does not do that ours does", ""]
    lines.append(
        "Ours, in every run: validates every row (rejects kept with file, line and reason under "
        "`Output/rejected/<run id>/`), publishes the spec's CSV to "
        "`Output/historical_stock_data.csv`, runs 13 checks (blocking ones stop the load), "
        "replaces the table atomically (TRUNCATE + COPY FREEZE + checks + the ledger row + the "
        "typed view in one transaction, committed after the upload), and records the run, "
        "its asset metadata and lineage in Dagster."
    )
    for name in peers:
        notes = PEER_NOTES[name]
        lines += ["", f"**{notes['label']}**", ""]
        lines += [f"- {text}" for text in notes["configuration"]]
        if notes["skips"]:
            lines += ["", "Compared with ours:", ""]
            lines += [f"- {text}" for text in notes["skips"]]
    return lines


def _duckdb_section(report: dict[str, Any]) -> list[str]:
    """The engine comparison: DuckDB's figures beside ours, and its CSV against ours."""
    engine = report["duckdb"]
    lines = ["", "## The DuckDB engine against ours", ""]
    if "summary" not in engine:
        return [*lines, f"Skipped: {engine['skipped']}."]
    summary, same = engine["summary"], engine["csv_vs_ours"]
    run = engine["runs"][0]
    lines += [
        "DuckDB phases (medians): "
        + ", ".join(f"{k} {_s(v, 3)}" for k, v in summary["phases"].items())
        + f". Rows read {run['rows_read']:,}, rejected {run['rows_rejected']:,}, written "
        f"{run['rows_written']:,}; {run['companies']:,} companies; files without rows: "
        f"{', '.join(run['files_without_rows']) or 'none'}. Table rows = CSV rows: "
        f"{report['verification'].get('duckdb_table_rows_equal_csv')}; each engine wrote the "
        f"same CSV in every run: {report['verification'].get('duckdb_csv_same_every_run')}.",
        "",
        "| | ours | DuckDB engine |",
        "|---|---:|---:|",
        *(
            f"| {label} | {_figure(same['ours'].get(key))} | {_figure(same['other'].get(key))} |"
            for label, key in [
                ("rows", "rows"),
                ("companies", "companies"),
                ("Σ value_change", "value_change_sum"),
            ]
        ),
        f"| CSV bytes | {same['bytes']['ours']:,} | {same['bytes']['other']:,} |",
        "",
    ]
    if "unreadable" in same["other"]:
        lines += [f"Its CSV is not the spec's nine columns: {same['other']['unreadable']}", ""]
    if same["identical"]:
        lines.append("Its CSV is **byte-identical** to ours.")
        return lines
    lines.append(
        f"Its CSV **differs** from ours in {same['lines_differing']:,} lines"
        + (
            " (columns: "
            + ", ".join(f"{k} {v:,}" for k, v in same["columns_differing"].items())
            + ")"
            if same["columns_differing"]
            else ""
        )
        + ". Examples:"
    )
    lines += ["", "```"]
    for example in same["examples"]:
        if "line" in example:
            lines += [
                f"line {example['line']}",
                f"  ours:   {example['ours']}",
                f"  duckdb: {example['other']}",
            ]
        else:
            lines.append(
                f"only in {example['only_in'].replace('other', 'duckdb')}: {example['text']}"
            )
    lines.append("```")
    return lines


def save_report(out_dir: Path, stem: str, report: dict[str, Any], text: str) -> tuple[Path, Path]:
    """`<out_dir>/<stem>.json` (the report) and `<stem>.md` (`text`, its Markdown)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(text)
    return json_path, md_path


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    return save_report(out_dir, report["mode"], report, markdown(report))
