"""`python -m benchmarks.latency [--quick] [--markers N]`: marker → run start and run end → email.

Issue 17's two latencies, on a deployment as an operator runs it: the webserver and the daemon
with the repository's `dagster.yaml` (PostgreSQL-backed instance, queued runs) and the sensors at
their default interval, on a local stack seeded with the 1,000 real files. For each marker, one
at a time (the previous marker's runs, the Parquet automation's included, finished first):
drop a `.SUCCESS` object, then read from the instance when its run was created, started and
ended, and poll (every 0.1 s) for the moment its email is out (the run's notification tag, set
right after SNS accepted the message). Each run is verified: SUCCESS, and exactly one message on
the topic for it. Figures only, no targets asserted; medians over the markers.

Writes `<out>/latency.{json,md}` (`latency-quick.*` with `--quick`: one marker; CI runs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import save_report
from benchmarks.run import RESULTS_DIR, _log, _machine
from stock_assets_tests.deployment import wait_until

POLL_SECONDS = 0.1
HEADER = (
    "| marker | → run created | created → run start | marker → run start | run "
    "| run end → email | marker → email | verified |\n|---|---:|---:|---:|---:|---:|---:|---|"
)


def _wait(predicate, what: str, timeout: float = 300):
    return wait_until(predicate, what, timeout, poll=POLL_SECONDS)


def _measure_marker(deployment: Any, instance: Any, stack: Any, key: str) -> dict[str, Any]:
    import boto3
    from dagster import DagsterRunStatus, RunsFilter

    from stock_assets.local.sns_inbox import sent_messages
    from stock_assets.notifications import NOTIFICATION_TAG
    from stock_assets.provision import drop_marker
    from stock_assets.settings import Naming

    naming = Naming()
    unfinished = [
        DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
    ]  # fmt: skip
    _wait(lambda: not instance.get_runs(RunsFilter(statuses=unfinished)), "a quiet instance", 600)
    before = {m.message_id for m in sent_messages(stack.moto.endpoint_url, naming.sns_topic)}

    dropped = time.time()
    drop_marker(boto3.client("s3"), naming.monitored_bucket, key)
    [run] = _wait(lambda: deployment.marker_runs(key), f"a run for {key}")
    status = deployment.wait_for_run(run.run_id, timeout=300)
    _wait(lambda: instance.get_run_by_id(run.run_id).tags.get(NOTIFICATION_TAG), "the email")
    emailed = time.time()
    record = instance.get_run_record_by_id(run.run_id)
    created = record.create_timestamp.timestamp()
    new = [
        m for m in sent_messages(stack.moto.endpoint_url, naming.sns_topic)
        if m.message_id not in before
    ]  # fmt: skip
    return {
        "key": key,
        "run_id": run.run_id,
        "status": status,
        "messages_for_the_run": sum(run.run_id in m.message for m in new),
        "marker_to_run_created_seconds": round(created - dropped, 2),
        "created_to_run_start_seconds": round((record.start_time or created) - created, 2),
        "marker_to_run_start_seconds": round((record.start_time or created) - dropped, 2),
        "run_seconds": round((record.end_time or 0) - (record.start_time or 0), 2),
        "run_end_to_email_seconds": round(emailed - (record.end_time or emailed), 2),
        "marker_to_email_seconds": round(emailed - dropped, 2),
    }


def measure(workdir: Path, markers: int) -> dict[str, Any]:
    """Start a stack and a deployment in `workdir`, measure `markers` markers, stop both."""
    import boto3

    from stock_assets.local.seed import seed_source_bucket
    from stock_assets.local.stack import LocalStack
    from stock_assets.notifications import DEFAULT_INTERVAL_SECONDS
    from stock_assets.settings import Naming
    from stock_assets_tests.deployment import DagsterDeployment

    stack = LocalStack(workdir=workdir / "stack")
    deployment = None
    try:
        _log(f"starting the local stack in {workdir}")
        os.environ.update(stack.start())
        seeded = seed_source_bucket(boto3.client("s3"), Naming())
        boto3.client("sns").create_topic(Name=Naming().sns_topic)
        deployment = DagsterDeployment(stack, home=workdir / "dagster_home")
        _log("starting the webserver and the daemon")
        deployment.start()
        deployment.wait_for_sensors()
        instance = deployment.instance()
        points = []
        for i in range(markers):
            point = _measure_marker(deployment, instance, stack, f"bench/latency-{i}/.SUCCESS")
            _log(
                f"marker {i + 1}/{markers}: marker → run start "
                f"{point['marker_to_run_start_seconds']:.1f}s, run end → email "
                f"{point['run_end_to_email_seconds']:.1f}s ({point['status']})"
            )
            points.append(point)
        return {
            "sensor_interval_seconds": DEFAULT_INTERVAL_SECONDS,
            "files": seeded.files_uploaded,
            "points": points,
        }
    finally:
        if deployment is not None:
            deployment.stop()
        stack.stop()


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    points = result["points"]
    keys = [k for k in points[0] if k.endswith("_seconds")]
    return {
        "medians": {k: round(statistics.median(p[k] for p in points), 2) for k in keys},
        "verified": all(
            p["status"] == "SUCCESS" and p["messages_for_the_run"] == 1 for p in points
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    m, c = report["summary"]["medians"], report["conditions"]
    rows = "\n".join(
        f"| {p['key']} | {p['marker_to_run_created_seconds']} | {p['created_to_run_start_seconds']}"
        f" | **{p['marker_to_run_start_seconds']}** | {p['run_seconds']} "
        f"| **{p['run_end_to_email_seconds']}** | {p['marker_to_email_seconds']} "
        f"| {p['status']}, {p['messages_for_the_run']} message |"
        for p in report["points"]
    )
    return f"""# Marker to inbox ({report["mode"]}): `python -m benchmarks.latency`

marker → run start {m["marker_to_run_start_seconds"]}s, run end → email \
{m["run_end_to_email_seconds"]}s (medians of {len(report["points"])}; verified: \
{report["summary"]["verified"]})

## Conditions

- {report["started_at"]}, commit {c["git_commit"]}; {c["cpus"]} CPUs, load average before \
{c["load_average_before"]}
- The webserver and the daemon with the repository's `dagster.yaml` (PostgreSQL-backed instance,
  QueuedRunCoordinator dequeuing every second, DefaultRunLauncher: each run in a fresh process of
  the code server), sensors at their default minimum interval of
  {report["sensor_interval_seconds"]} s, on a local stack (moto, embedded PostgreSQL) seeded with
  the real files. One marker at a time, after every earlier run (the Parquet automation's too)
  finished.
- Run start and end are the instance's records; the email's time is when the run's notification
  tag appeared (polled every {POLL_SECONDS} s), set right after SNS accepted the message.

## Per marker (seconds)

{HEADER}
{rows}

Where marker → run start goes: the marker sensor's tick (up to the interval, plus the tick's own
work) creates the run; the queue hands it to the launcher within a second; the run's process
starts (interpreter, imports, loading the definitions) before RUN_START. Run end → email: the
success sensor's next tick (up to the interval) builds the report and publishes.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one marker (CI)")
    parser.add_argument("--markers", type=int, default=None, help="markers to time (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON + MD go")
    args = parser.parse_args(argv)
    markers = args.markers or (1 if args.quick else 5)
    mode = "quick" if args.quick else "full"
    workdir = Path(tempfile.mkdtemp(prefix="stock-assets-latency-"))
    started_at, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.getloadavg()
    try:
        result = measure(workdir, markers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "schema": 1,
        "mode": mode,
        "started_at": started_at,
        **result,
        "summary": summarise(result),
        "conditions": {**_machine(), "load_average_before": [round(x, 2) for x in load_before]},
    }
    stem = "latency-quick" if args.quick else "latency"
    save_report(args.out, stem, report, markdown(report))
    m = report["summary"]["medians"]
    print(
        f"latency ({mode}): marker → run start {m['marker_to_run_start_seconds']}s, run end → "
        f"email {m['run_end_to_email_seconds']}s, verified {report['summary']['verified']}"
    )
    return 0 if report["summary"]["verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
