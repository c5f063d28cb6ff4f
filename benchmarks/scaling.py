"""`python -m benchmarks.scaling [--quick] [--factors 1 2 5 10]`: the 1×–10× series (issue 18).

On one local stack (moto + embedded PostgreSQL, as `benchmarks.run` starts it), for each factor
k: the input is k × 1,000 files (the 1,000 real files the filter names, then the manifest's other
names, then derived names `<stem>-r2.us.csv`, `-r3`, … with the manifest's sizes and row counts,
rows generated deterministically) and a filter naming exactly those. Each k's files are added to
the bucket before its runs (k's input is a prefix of the next k's, so nothing is uploaded twice).
Then `stock_pipeline_job` and `stock_pipeline_sharded_job` (N shards, multiprocess executor) run
each in a fresh `dagster job execute` process, as a user runs them, with `max_files` raised to
k × 1,000. Per run: wall seconds, CPU seconds (the process tree + moto + PostgreSQL), peak RSS
(the largest single process and the sum over the tree), S3 requests and bytes (the run's
`AWS_ENDPOINT_URL` points at a counting proxy, `benchmarks.s3_counter`), rows; each run verified
(table rows = CSV lines; the sharded CSV byte-identical to the single path's at the same k).

Writes `<out>/scaling.{json,md}` (`scaling-quick.*` with `--quick`, which CI runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks import dataset
from benchmarks.report import linear_fit, save_report
from benchmarks.run import (
    RESULTS_DIR,
    Runner,
    _child_env,
    _log,
    _machine,
    _stop,
    _table_rows,
    start_stack,
)

PATHS = ["single", "sharded"]
# Peak RSS "flat" if the largest k's is within this factor of the smallest k's.
BOUNDED_RSS_RATIO = 1.25
LINEAR_R2 = 0.98
# "No full-dataset copy in one process": its peak grows by less than this share of the input.
DATA_COPY_FRACTION = 0.25


@dataclass
class Series:
    mode: str
    factors: list[int]
    base_files: int  # files at 1×
    shards: int


FULL = Series("full", [1, 2, 5, 10], 1000, 4)
QUICK = Series("quick", [1, 2], 20, 2)


def derived_name(file_name: str, round_: int) -> str:
    """`aapl.us.csv` → `aapl-r2.us.csv`: its own company (no duplicate keys across rounds)."""
    stem, _, rest = file_name.partition(".")
    return f"{stem}-r{round_}.{rest}"


def input_entries(source: dataset.DataSource) -> Iterator[dataset.ManifestEntry]:
    """The files of the series in order, without end: the filter's real names, the manifest's
    other names, then every manifest entry again under derived names, round after round."""
    manifest = dataset.read_manifest(source)
    by_name = {entry.file_name: entry for entry in manifest}
    real = dataset.filter_names(source)
    yield from (by_name[name] for name in real)
    yield from (entry for entry in manifest if entry.file_name not in set(real))
    round_ = 2
    while True:
        for entry in manifest:
            yield dataset.ManifestEntry(
                derived_name(entry.file_name, round_), entry.bytes, entry.rows
            )
        round_ += 1


class CountingProxy:
    """`benchmarks.s3_counter` in its own process: its CPU is kept apart from the run's."""

    def __init__(self, upstream: str, log_path: Path) -> None:
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.s3_counter", upstream],
            cwd=dataset.REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the counting proxy did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        self._ps = psutil.Process(self.process.pid)

    def counts(self, reset: bool = False) -> dict[str, Any]:
        url = f"{self.url}/__counts__{'?reset=1' if reset else ''}"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our loopback proxy
            return json.loads(answer.read())

    def cpu_seconds(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


def _csv_facts(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """SHA-256, bytes and lines of the output CSV (no header: lines = rows), streamed."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size, lines = hashlib.sha256(), 0, 0
    while block := body.read(8 << 20):
        digest.update(block)
        size += len(block)
        lines += block.count(b"\n")
    return {"sha256": digest.hexdigest(), "bytes": size, "rows": lines}


def _run_config(series: Series, files: int, max_file_bytes: int) -> dict[str, Any]:
    # The spec's limits stay the defaults; an operator scaling up raises them knowingly.
    settings = {"max_files": files, "max_file_bytes": max_file_bytes, "shards": series.shards}
    return {"resources": {"settings": {"config": settings}}}


def _summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    ks = [p["factor"] for p in points]
    fits = {}
    for name, values in [
        ("wall", [p["wall_seconds"] for p in points]),
        ("cpu", [p["cpu_seconds"]["total"] for p in points]),
        # The run's own processes apart: moto's share is the emulator's, not S3's on AWS.
        ("run_process_cpu", [p["cpu_seconds"]["run_process"] for p in points]),
        ("moto_cpu", [p["cpu_seconds"]["moto"] for p in points]),
    ]:
        fit = linear_fit(ks, values)
        fits[name] = (
            {
                "intercept_seconds": fit["intercept_seconds"],
                "seconds_per_k": fit["seconds_per_mb"],  # linear_fit names its slope per MB
                "r2": fit["r2"],
                "max_relative_residual": fit["max_relative_residual"],
            }
            if fit
            else None
        )
    first, last = points[0], points[-1]
    rss_first = first["peak_rss"]["largest_process_bytes"]
    rss_growth = last["peak_rss"]["largest_process_bytes"] - rss_first
    input_growth = last["bytes_read"] - first["bytes_read"]
    csv_growth = last["csv"]["bytes"] - first["csv"]["bytes"]
    files_growth = last["files"] - first["files"]
    return {
        "fit_seconds_vs_k": fits["wall"],
        "fit_cpu_seconds_vs_k": fits["cpu"],
        "fit_run_process_cpu_seconds_vs_k": fits["run_process_cpu"],
        "fit_moto_cpu_seconds_vs_k": fits["moto_cpu"],
        "largest_process_rss_ratio_last_over_first": round((rss_first + rss_growth) / rss_first, 3),
        "largest_process_rss_growth_bytes": rss_growth,
        "rss_growth_per_added_file_bytes": round(rss_growth / files_growth) if files_growth else 0,
        "input_growth_bytes": input_growth,
        "csv_growth_bytes": csv_growth,
        # Flat: within BOUNDED_RSS_RATIO. Bounded: whatever grows is a small fraction of the
        # data added (no copy of the dataset or of the CSV held in one process).
        "memory_flat": (rss_first + rss_growth) / rss_first <= BOUNDED_RSS_RATIO,
        "memory_bounded": rss_growth <= DATA_COPY_FRACTION * input_growth,
        # Two points always fit a line: linearity needs three factors or more.
        "time_linear": fits["wall"]["r2"] >= LINEAR_R2 if len(points) >= 3 else None,
        "verified": all(p["verification"]["passed"] for p in points),
    }


def run_series(series: Series, out_dir: Path, keep: bool = False) -> dict[str, Any]:
    import boto3

    from stock_assets.bucket_layout import ensure_layout, upload_filter_and_scripts
    from stock_assets.jobs import STOCK_PIPELINE_JOB
    from stock_assets.local.stack import LocalStack
    from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, STOCKS_PREFIX, TABLE_NAME, Naming
    from stock_assets.sharded import SHARDED_JOB

    jobs = {"single": STOCK_PIPELINE_JOB, "sharded": SHARDED_JOB}
    workdir = Path(tempfile.mkdtemp(prefix=f"stock-scaling-{series.mode}-"))
    stack = LocalStack(workdir=workdir)
    proxy: CountingProxy | None = None
    report: dict[str, Any] = {
        "schema": 1,
        "mode": series.mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "series": asdict(series),
        "dataset": [],
        "paths": {path: {"job": jobs[path], "points": []} for path in PATHS},
    }
    load_before = os.getloadavg()
    try:
        stack_env, dagster_home = start_stack(stack, workdir)
        proxy = CountingProxy(stack.moto.endpoint_url, workdir / "s3_counter.log")
        env = _child_env(stack_env, dagster_home)
        env["AWS_ENDPOINT_URL"] = proxy.url  # the runs' S3 traffic only; ours goes direct
        runner = Runner(env, workdir, stack.moto.process.pid, stack.postgres.pgdata)
        database_url = stack_env["STOCK_ASSETS_DATABASE_URL"]
        client = boto3.client("s3")
        naming = Naming()
        bucket = naming.source_bucket
        ensure_layout(client, naming)

        source = dataset.find_data_source()
        total = max(series.factors) * series.base_files
        entries = input_entries(source)
        planned = [next(entries) for _ in range(total)]
        real = dataset.real_files(source, {e.file_name for e in planned})
        # Enough for the largest file (synthetic sizes are close to the manifest's, not exact).
        sizes = [len(b) for b in real.values()] + [int(e.bytes * 1.1) for e in planned]
        max_file_bytes = max([1_000_000, *sizes])
        report["source"] = source.note
        dagster = str(Path(sys.executable).with_name("dagster"))

        def put(entry: dataset.ManifestEntry) -> int:
            body = real.get(entry.file_name)
            if body is None:
                body = dataset.synthetic_file(entry)
            client.put_object(Bucket=bucket, Key=STOCKS_PREFIX + entry.file_name, Body=body)
            return len(body)

        uploaded, input_bytes = 0, 0
        first = True
        for k in sorted(series.factors):
            files = k * series.base_files
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                input_bytes += sum(pool.map(put, planned[uploaded:files]))
            added, uploaded = files - uploaded, files
            names = [e.file_name for e in planned[:files]]
            filter_bytes = dataset.filter_file(names)
            if first:  # the layout's scripts and the filter; later only the filter changes
                upload_filter_and_scripts(client, bucket, filter_bytes)
                first = False
            else:
                client.put_object(Bucket=bucket, Key=FILTER_KEY, Body=filter_bytes)
            built = {
                "factor": k,
                "files": files,
                "real_files": sum(1 for n in names if n in real),
                "input_bytes": input_bytes,
                "files_added": added,
                "build_seconds": round(time.perf_counter() - started, 2),
            }
            report["dataset"].append(built)
            _log(
                f"{k}×: {files} files, {input_bytes / 1e6:.1f} MB in the bucket "
                f"({added} added in {built['build_seconds']}s)"
            )
            config_path = workdir / f"config-{k}.yaml"
            # JSON is YAML: the file `dagster job execute -c` reads.
            config_path.write_text(json.dumps(_run_config(series, files, max_file_bytes)))
            single_sha = None
            for path in PATHS:
                command = [dagster, "job", "execute", "-m", "stock_assets.definitions"]
                command += ["-j", jobs[path], "-c", str(config_path)]
                client.delete_object(Bucket=bucket, Key=OUTPUT_KEY)  # no stale CSV can pass
                proxy.counts(reset=True)
                proxy_cpu = proxy.cpu_seconds()
                load = os.getloadavg()
                result = runner.spawn({"approach": f"{path}-{k}x"}, command=command)
                proxy_cpu = proxy.cpu_seconds() - proxy_cpu
                s3 = proxy.counts(reset=True)
                csv = _csv_facts(client, bucket, OUTPUT_KEY)
                table_rows = _table_rows(database_url, TABLE_NAME)
                if path == "single":
                    single_sha = csv["sha256"]
                checks = {
                    "table_rows_equal_csv_rows": table_rows == csv["rows"],
                    "csv_identical_to_single_path": csv["sha256"] == single_sha,
                    "every_file_read_once": s3["requests"].get("GET Stocks/") == files,
                }
                whole = result["whole_process"]
                point = {
                    "factor": k,
                    "files": files,
                    "bytes_read": s3["response_body_bytes"].get("GET Stocks/", 0),
                    "rows": table_rows,
                    "wall_seconds": whole["wall_seconds"],
                    "cpu_seconds": whole["cpu_seconds"],
                    "counting_proxy_cpu_seconds": round(proxy_cpu, 3),
                    "peak_rss": {
                        "largest_process_bytes": whole["largest_process_peak_rss_bytes"],
                        "sum_over_processes_bytes": whole["peak_rss_bytes"],
                    },
                    "s3": s3,
                    "csv": csv,
                    "load_average_at_start": [round(x, 2) for x in load],
                    "verification": {**checks, "passed": all(checks.values())},
                }
                report["paths"][path]["points"].append(point)
                _log(
                    f"{path:7s} {k}×: {point['wall_seconds']:.1f}s, "
                    f"{point['cpu_seconds']['total']:.1f} CPU-s, peak RSS "
                    f"{point['peak_rss']['largest_process_bytes'] / 1e6:.0f} MB (Σ "
                    f"{point['peak_rss']['sum_over_processes_bytes'] / 1e6:.0f} MB), "
                    f"{s3['total_requests']} S3 requests, {table_rows:,} rows, "
                    f"verified {point['verification']['passed']}"
                )
                # Written as it goes: a long series stopped midway keeps what finished.
                _write(report, out_dir, load_before)
        for path in PATHS:
            report["paths"][path]["summary"] = _summary(report["paths"][path]["points"])
    finally:
        if proxy:
            proxy.stop()
        stack.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["verified"] = all(report["paths"][p]["summary"]["verified"] for p in PATHS)
    _write(report, out_dir, load_before)
    return report


def _write(report: dict[str, Any], out_dir: Path, load_before: tuple[float, ...]) -> None:
    report["conditions"] = {
        **_machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "shared 2-core machine: other sessions' work may run at the same time (see "
        "each run's load average); every run's S3 traffic passes through a counting proxy "
        "(its CPU is reported apart, not in the totals)",
    }
    stem = "scaling" if report["mode"] == "full" else f"scaling-{report['mode']}"
    save_report(out_dir, stem, report, markdown(report))


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def _cpu(cpu: dict[str, float]) -> str:
    return (
        f"{cpu['total']:.1f} ({cpu['run_process']:.1f} / {cpu['moto']:.1f} / {cpu['postgres']:.1f})"
    )


def markdown(report: dict[str, Any]) -> str:
    series, conditions = report["series"], report["conditions"]
    lines = [
        f"# Scaling series 1×–{max(series['factors'])}× ({report['mode']})",
        "",
        f"`python -m benchmarks.scaling{' --quick' if report['mode'] == 'quick' else ''}`, "
        f"started {report['started_at']}: {series['base_files']:,} files × k on one local stack "
        f"(moto + embedded PostgreSQL), each run a fresh `dagster job execute` process; the "
        f"sharded path with N = {series['shards']} under the multiprocess executor. "
        f"Source: {report.get('source', '?')}.",
        "",
        f"Conditions: commit {conditions['git_commit']}"
        f"{' (uncommitted changes in the tree)' if conditions['git_dirty'] else ''}, "
        f"{conditions['cpus']} CPUs ({conditions['cpu_model']}), load average before "
        f"{conditions['load_average_before']}, after {conditions['load_average_after']}; "
        f"Python {conditions['versions']['python']}, dagster {conditions['versions']['dagster']}, "
        f"moto {conditions['versions']['moto']}, pyarrow {conditions['versions']['pyarrow']}. "
        f"{conditions['note']}.",
        "",
        "CPU seconds: the run's process tree (wait4) + moto + PostgreSQL over the run. Peak RSS: "
        "the largest single process's VmHWM, and Σ VmHWM over the tree's live processes "
        "(sampled every 0.1 s; an upper bound of the simultaneous total). S3 requests: counted "
        "by the proxy (GET Stocks/ = the stock files).",
        "",
    ]
    for path in PATHS:
        data = report["paths"][path]
        lines += [
            f"## {path} path (`{data['job']}`)",
            "",
            "| k | files | MB read | rows | wall s | CPU s (run / moto / PostgreSQL) "
            "| peak RSS (largest) | peak RSS (Σ) "
            "| S3 requests | of which GET Stocks/ | load avg | verified |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in data["points"]:
            s3 = p["s3"]
            others = ", ".join(
                f"{kind} {n}" for kind, n in sorted(s3["requests"].items()) if kind != "GET Stocks/"
            )
            lines.append(
                f"| {p['factor']} | {p['files']:,} | {p['bytes_read'] / 1e6:,.1f} | "
                f"{p['rows']:,} | {p['wall_seconds']:.1f} | {_cpu(p['cpu_seconds'])} | "
                f"{_mb(p['peak_rss']['largest_process_bytes'])} | "
                f"{_mb(p['peak_rss']['sum_over_processes_bytes'])} | {s3['total_requests']:,} "
                f"({others}) | {s3['requests'].get('GET Stocks/', 0):,} | "
                f"{p['load_average_at_start'][0]:.1f} | "
                f"{'yes' if p['verification']['passed'] else 'NO'} |"
            )
        summary = data.get("summary")
        if summary:
            fit = summary["fit_seconds_vs_k"]
            cpu = summary["fit_cpu_seconds_vs_k"]
            lines += ["", _verdict(fit, cpu, summary)]
            run_cpu, moto = (
                summary["fit_run_process_cpu_seconds_vs_k"],
                summary["fit_moto_cpu_seconds_vs_k"],
            )
            if run_cpu and moto:
                lines += [
                    "",
                    f"Per k, CPU seconds of the run's own processes ≈ "
                    f"{run_cpu['seconds_per_k']:.1f} (r² = {run_cpu['r2']:.4f}); of moto ≈ "
                    f"{moto['seconds_per_k']:.1f} (r² = {moto['r2']:.4f}).",
                ]
        lines.append("")
    if "verified" in report:
        lines.append(
            "Verification: every run's table holds as many rows as its CSV has lines, each "
            "stock file was read once, and the sharded CSV is byte-identical (SHA-256) to the "
            f"single path's at every k: **{'passed' if report['verified'] else 'FAILED'}**."
        )
    else:
        lines.append("**Incomplete: the series stopped before its last run** (see the JSON).")
    return "\n".join(lines) + "\n"


def _verdict(fit: dict | None, cpu: dict | None, summary: dict[str, Any]) -> str:
    if not fit or not cpu:
        return "One factor only: no fit."
    ratio = summary["largest_process_rss_ratio_last_over_first"]
    growth = (
        f"the largest process's peak RSS ×{ratio:.2f} from the first k to the last "
        f"({summary['largest_process_rss_growth_bytes'] / 1e6:+,.0f} MB, "
        f"{summary['rss_growth_per_added_file_bytes'] / 1e3:.0f} KB per added file, while the "
        f"input grew by {summary['input_growth_bytes'] / 1e6:,.0f} MB and the CSV by "
        f"{summary['csv_growth_bytes'] / 1e6:,.0f} MB)"
    )
    if summary["memory_flat"]:
        memory = f"memory stays flat ({growth})"
    elif summary["memory_bounded"]:
        memory = f"memory stays bounded but is not flat: no copy of the data, yet {growth}"
    else:
        memory = f"memory is NOT bounded: {growth}"
    linear = {True: "grows linearly", False: "is NOT linear", None: "(two factors: no test)"}[
        summary["time_linear"]
    ]
    return (
        f"Wall seconds ≈ {fit['intercept_seconds']:.1f} {fit['seconds_per_k']:+.1f} × k "
        f"(r² = {fit['r2']:.4f}); CPU seconds ≈ {cpu['intercept_seconds']:.1f} "
        f"{cpu['seconds_per_k']:+.1f} × k (r² = {cpu['r2']:.4f}). Time {linear} and {memory}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the small version CI runs")
    parser.add_argument("--factors", type=int, nargs="+", help="k values (default 1 2 5 10)")
    parser.add_argument("--base-files", type=int, help="files at 1× (default 1,000)")
    parser.add_argument("--shards", type=int, help="N of the sharded path (default 4)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON + MD go")
    parser.add_argument("--keep", action="store_true", help="keep the stack folder and logs")
    parser.add_argument(
        "--rerender", type=Path, help="recompute the summaries and the .md of a recorded JSON"
    )
    args = parser.parse_args(argv)
    if args.rerender:
        report = json.loads(args.rerender.read_text())
        for path in PATHS:
            report["paths"][path]["summary"] = _summary(report["paths"][path]["points"])
        save_report(args.rerender.parent, args.rerender.stem, report, markdown(report))
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):  # still stop moto and PostgreSQL
        signal.signal(sig, _stop)
    base = QUICK if args.quick else FULL
    series = Series(
        base.mode,
        sorted(set(args.factors or base.factors)),
        args.base_files or base.base_files,
        args.shards or base.shards,
    )
    report = run_series(series, args.out, keep=args.keep)
    for path in PATHS:
        summary = report["paths"][path]["summary"]
        fit = summary["fit_seconds_vs_k"]
        print(
            f"{path}: r² {fit['r2'] if fit else '-'}, memory bounded {summary['memory_bounded']}, "
            f"verified {summary['verified']}",
            flush=True,
        )
    return 0 if report["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
