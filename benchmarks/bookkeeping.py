"""`python -m benchmarks.bookkeeping [--quick] [--rounds N]`: Dagster's own time in a run.

What separates a `stock_pipeline_job` run from the pipeline it wraps: the events Dagster writes
(materialisations and checks planned when the run is created, each check's output and
evaluation, each materialisation, the step's and the run's), for each kind of instance storage
a deployment can have. One process, one local stack seeded with the real files, one instance
per storage, the same job run on each in turn, round after round (the first round is a warm-up,
not reported): SQLite in a DAGSTER_HOME on disk (`dagster dev`'s default), the same on tmpfs (no
fsync cost), and PostgreSQL (what the repository's `dagster.yaml` configures), on the stack's
server. Each run is read back from its event log:

- before the step: from the run's first event to STEP_START (planned events, RUN_START,
  resource initialisation);
- the pipeline: STEP_START to the step's first output (the asset body's `run_pipeline`);
- after the pipeline: from that output to the run's last event (the results turned into
  materialisations and check evaluations, each stored).

Figures only, no targets. Writes `<out>/bookkeeping.{json,md}` (`bookkeeping-quick.*` with
`--quick`: 40 files, no warm-up, one round; CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from benchmarks.report import save_report
from benchmarks.run import RESULTS_DIR, _log, _machine

QUICK_FILES = 40


def _instances(workdir: Path, stack: Any, tmpfs_home: Path | None) -> dict[str, Any]:
    from dagster import DagsterInstance

    from stock_assets_tests.deployment import dagster_storage_url

    storage_url = dagster_storage_url(stack, "dagster_bookkeeping")
    homes: dict[str, tuple[Path, str]] = {
        "sqlite_disk": (workdir / "home-disk", ""),
        "postgres": (
            workdir / "home-postgres",
            f"storage:\n  postgres:\n    postgres_url: {json.dumps(storage_url)}\n",
        ),
    }
    if tmpfs_home is not None:
        homes["sqlite_tmpfs"] = (tmpfs_home, "")
    instances = {}
    for name, (home, storage) in homes.items():
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + storage)
        instances[name] = DagsterInstance.from_config(str(home))
    return instances


def _measure_run(job: Any, instance: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    total = time.perf_counter() - started
    logs = instance.all_logs(result.run_id)

    def first(kind: str) -> float:
        return next(
            e.timestamp
            for e in logs
            if e.dagster_event is not None and e.dagster_event.event_type_value == kind
        )

    step_start, first_output = first("STEP_START"), first("STEP_OUTPUT")
    before, pipeline = step_start - logs[0].timestamp, first_output - step_start
    return {
        "success": result.success,
        "events": len(logs),
        "run_seconds": round(total, 4),
        "before_step_seconds": round(before, 4),
        "pipeline_seconds": round(pipeline, 4),
        "after_pipeline_seconds": round(logs[-1].timestamp - first_output, 4),
        "bookkeeping_seconds": round(total - pipeline, 4),
    }


def measure(
    workdir: Path, tmpfs_home: Path | None, rounds: int, warmup: bool, files: int | None
) -> dict[str, Any]:
    from stock_assets.aws import aws_client
    from stock_assets.bucket_layout import FILTER_NAME, find_data_dir
    from stock_assets.local.seed import seed_source_bucket
    from stock_assets.local.stack import LocalStack
    from stock_assets.settings import Naming

    stack = LocalStack(workdir=workdir / "stack")
    os.environ.update(stack.start())
    try:
        data_dir = find_data_dir()
        names = (data_dir / FILTER_NAME).read_text().split()
        filter_bytes = ("\n".join(names[:files]) + "\n").encode() if files else None
        seed = seed_source_bucket(
            aws_client("s3"), Naming.from_env(), data_dir, filter_bytes=filter_bytes
        )
        _log(f"seeded {seed.files_uploaded} files; the filter names {files or len(names)}")

        from stock_assets.definitions import defs
        from stock_assets.jobs import STOCK_PIPELINE_JOB

        job = defs.resolve_job_def(STOCK_PIPELINE_JOB)
        instances = _instances(workdir, stack, tmpfs_home)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in instances}
        for index in range(rounds + (1 if warmup else 0)):
            for name, instance in instances.items():
                run = _measure_run(job, instance)
                measured = not (warmup and index == 0)
                label = f"round {index + (0 if warmup else 1)}" if measured else "warm-up"
                _log(f"{name:13s} {label}: {run}")
                if measured:
                    runs[name].append(run)
        return {"runs": runs, "files": files or len(names)}
    finally:
        stack.stop()


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    keys = ["run_seconds", "before_step_seconds", "pipeline_seconds", "after_pipeline_seconds",
            "bookkeeping_seconds"]  # fmt: skip
    medians = {
        name: {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
        | {"events": max(r["events"] for r in runs)}
        for name, runs in result["runs"].items()
    }
    verified = all(r["success"] for runs in result["runs"].values() for r in runs)
    return {"medians": medians, "verified": verified}


def markdown(report: dict[str, Any]) -> str:
    c = report["conditions"]
    rows = "\n".join(
        f"| {name} | {m['run_seconds']} | {m['pipeline_seconds']} | {m['before_step_seconds']} | "
        f"{m['after_pipeline_seconds']} | **{m['bookkeeping_seconds']}** | {m['events']} |"
        for name, m in report["summary"]["medians"].items()
    )
    return f"""# Dagster's own time in a stock_pipeline_job run ({report["mode"]})

Medians over {report["rounds"]} round(s), seconds; every run succeeded: \
{report["summary"]["verified"]}.

| instance storage | run | the pipeline (STEP_START → first output) | before the step | after \
the pipeline | Dagster's share (run − pipeline) | events |
|---|---:|---:|---:|---:|---:|---:|
{rows}

## Conditions

- {report["started_at"]}, commit {c["git_commit"]}; {c["cpus"]} CPUs ({c["cpu_model"]}), load \
average before {c["load_average_before"]}
- One process, one local stack (moto, embedded PostgreSQL) seeded with the real files
  ({report["files"]} named by the filter), the same job on each instance in turn, round after
  round{", after one warm-up round" if report["warmup"] else ""}. `execute_in_process`, the
  job's in-process executor; timestamps from each run's event log.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 files, one round (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON + MD go")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    files = QUICK_FILES if args.quick else None
    shm = Path("/dev/shm")  # noqa: S108 (tmpfs on purpose: SQLite without the fsync cost)
    started_at, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.getloadavg()
    with (
        tempfile.TemporaryDirectory(
            prefix="stock-assets-bookkeeping-", ignore_cleanup_errors=True
        ) as workdir,
        tempfile.TemporaryDirectory(dir=shm) if shm.is_dir() else nullcontext() as tmpfs_home,
    ):
        result = measure(
            Path(workdir),
            Path(tmpfs_home) if tmpfs_home else None,
            rounds,
            warmup=not args.quick,
            files=files,
        )
    report = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "started_at": started_at,
        "rounds": rounds,
        "warmup": not args.quick,
        **result,
        "summary": summarise(result),
        "conditions": {**_machine(), "load_average_before": [round(x, 2) for x in load_before]},
    }
    stem = "bookkeeping-quick" if args.quick else "bookkeeping"
    save_report(args.out, stem, report, markdown(report))
    for name, m in report["summary"]["medians"].items():
        print(f"bookkeeping ({report['mode']}) {name}: run {m['run_seconds']}s, Dagster's share "
              f"{m['bookkeeping_seconds']}s, {m['events']} events")  # fmt: skip
    return 0 if report["summary"]["verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
