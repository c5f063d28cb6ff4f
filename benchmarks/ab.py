"""`python -m benchmarks.ab REV [--pairs N] [--files N]`: the working tree against a revision.

A change worth a few percent drowns in the drift of a shared 2-core host between two full
benchmark invocations. This measures it the way the results README's "alternating pairs" are
measured: on one local stack (a bucket holding the files the filter names, nothing else), the
working tree (A) and `REV` (B, checked out in a temporary git worktree) each run
`stock_pipeline_job` as a user runs it (`dagster job execute`), A B, B A, A B, … so that neither
side always goes first, after one untimed run of each.

Each side runs with its own tree as the working directory: the Dagster CLI puts the working
directory first on `sys.path`, so `PYTHONPATH` alone would load A's code on both sides. Per
run: the run's own time (the instance's start and end), the whole process (spawn to exit), and
CPU seconds of the process, moto and PostgreSQL (`Runner.spawn`, a settled server before each
run). Writes `<out>/ab-<name>.json` and `.md` (medians of each side and the paired difference
B − A, its median and mean) and prints one summary line.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import dataset
from benchmarks.report import save_report
from benchmarks.run import (
    REPO_ROOT,
    RESULTS_DIR,
    Profile,
    Runner,
    _child_env,
    _command,
    _log,
    _machine,
    _median,
    _stop,
    build_bucket,
    start_stack,
)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _run_record(dagster_home: Path) -> dict[str, Any]:
    """The newest run in an instance: its status and its own seconds."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        record = instance.get_run_records(limit=1)[0]
    return {
        "status": record.dagster_run.status.value,
        "run_seconds": round((record.end_time or 0) - (record.start_time or 0), 4),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "run_seconds": _median([r["run_seconds"] for r in runs]),
        "process_wall_seconds": _median([r["process_wall_seconds"] for r in runs]),
        "cpu_seconds_total": _median([r["cpu_seconds"]["total"] for r in runs]),
        "cpu_seconds_process": _median([r["cpu_seconds"]["run_process"] for r in runs]),
    }


def measure(rev: str, pairs: int, files: int | None, out: Path, name: str) -> dict[str, Any]:
    import boto3

    from stock_assets.local.stack import LocalStack

    b_commit = _git("rev-parse", "--short", rev)
    workdir = Path(tempfile.mkdtemp(prefix="stock-ab-"))
    tree_b = workdir / "tree-b"
    stack = LocalStack(workdir=workdir / "stack")
    report: dict[str, Any] = {
        "schema": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "conditions": _machine(),
        "a": {"tree": str(REPO_ROOT), "commit": _git("rev-parse", "--short", "HEAD")},
        "b": {"rev": rev, "commit": b_commit},
        "pairs": [],
    }
    report["a"]["dirty"] = report["conditions"]["git_dirty"]
    try:
        _git("worktree", "add", "--detach", str(tree_b), rev)
        stack_env, home_a = start_stack(stack, workdir / "stack")
        home_b = workdir / "dagster_home_b"
        shutil.copytree(home_a, home_b)
        assert stack.moto.process is not None and stack.postgres is not None
        sides = {}
        for side, tree, home in (("A", REPO_ROOT, home_a), ("B", tree_b, home_b)):
            env = _child_env(stack_env, home)
            env["PYTHONPATH"] = str(tree)
            runner = Runner(env, workdir, stack.moto.process.pid, stack.postgres.pgdata, tree)
            sides[side] = (runner, tree, home)
        profile = Profile("ab", files, 0, pairs, 0.0)
        bucket = build_bucket(boto3.client("s3"), profile, dataset.find_data_source())
        report["dataset"] = {k: bucket[k] for k in ("real_files", "real_bytes", "source")}
        command = _command("ours_cli", {}, workdir)

        def run(side: str) -> dict[str, Any]:
            runner, tree, home = sides[side]
            result = runner.spawn({"approach": f"ab-{side}"}, command=command)
            record = _run_record(home)
            if record["status"] != "SUCCESS":
                raise RuntimeError(f"side {side} ({tree}): run ended {record['status']}")
            whole = result["whole_process"]
            return {
                "run_seconds": record["run_seconds"],
                "process_wall_seconds": whole["wall_seconds"],
                "cpu_seconds": whole["cpu_seconds"],
            }

        for side in ("A", "B"):
            _log(f"warm-up {side}: {run(side)['run_seconds']}s (not counted)")
        for index in range(pairs):
            order = ("A", "B") if index % 2 == 0 else ("B", "A")
            pair = {side: run(side) for side in order}
            pair["b_minus_a_run_seconds"] = round(
                pair["B"]["run_seconds"] - pair["A"]["run_seconds"], 4
            )
            report["pairs"].append(pair)
            _log(
                f"pair {index + 1}/{pairs}: A {pair['A']['run_seconds']}s, "
                f"B {pair['B']['run_seconds']}s"
            )
    finally:
        stack.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree_b)], cwd=REPO_ROOT)
        shutil.rmtree(workdir, ignore_errors=True)

    differences = [p["b_minus_a_run_seconds"] for p in report["pairs"]]
    report["summary"] = {
        "A": _summary([p["A"] for p in report["pairs"]]),
        "B": _summary([p["B"] for p in report["pairs"]]),
        "b_minus_a_run_seconds": {
            "median": _median(differences),
            "mean": round(statistics.fmean(differences), 4),
            "b_faster_in": sum(d < 0 for d in differences),
        },
    }
    diff = report["summary"]["b_minus_a_run_seconds"]
    report["summary_line"] = (
        f"ab: A (working tree, {report['a']['commit']}) {report['summary']['A']['run_seconds']}s,"
        f" B ({rev} = {b_commit}) {report['summary']['B']['run_seconds']}s (medians of "
        f"{pairs} pairs); B − A median {diff['median']:+}s, mean {diff['mean']:+}s, "
        f"B faster in {diff['b_faster_in']} of {pairs}"
    )
    save_report(out, f"ab-{name}", report, _markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    a, b, c = report["a"], report["b"], report["conditions"]
    lines = [
        f"# A/B: the working tree ({a['commit']}{', with changes' if a['dirty'] else ''}) "
        f"against {b['rev']} ({b['commit']})",
        "",
        report["summary_line"],
        "",
        f"- {report['started_at']}; {c['cpus']} CPUs ({c['cpu_model']}); "
        f"{report['dataset']['real_files']} files ({report['dataset']['source']})",
        "- each run: `dagster job execute` of `stock_pipeline_job`, its tree as the working "
        "directory; run = the instance's start to end; CPU = process + moto + PostgreSQL",
        "",
        "| pair | A run s | B run s | B − A | A CPU s | B CPU s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, p in enumerate(report["pairs"], 1):
        lines.append(
            f"| {i} | {p['A']['run_seconds']} | {p['B']['run_seconds']} | "
            f"{p['b_minus_a_run_seconds']:+} | {p['A']['cpu_seconds']['total']} | "
            f"{p['B']['cpu_seconds']['total']} |"
        )
    lines += ["", "| medians | run s | whole process s | CPU s (total) | CPU s (process) |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for side in ("A", "B"):
        s = report["summary"][side]
        lines.append(
            f"| {side} | {s['run_seconds']} | {s['process_wall_seconds']} | "
            f"{s['cpu_seconds_total']} | {s['cpu_seconds_process']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--pairs", type=int, default=10, help="measured pairs (default 10)")
    parser.add_argument("--files", type=int, help="the first N files of the filter (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON + MD go")
    parser.add_argument("--name", help="the report's name: ab-<name>.{json,md} (default: REV)")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    name = args.name or re.sub(r"[^A-Za-z0-9._-]+", "-", args.rev)
    report = measure(args.rev, args.pairs, args.files, args.out, name)
    print(report["summary_line"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
