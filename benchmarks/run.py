"""`python -m benchmarks.run [--quick]`: ours vs the machine's limit, the peers and the course.

One invocation: start the local stack (moto + embedded PostgreSQL) in a temporary folder, build
the source bucket (real files + the synthetic rest of a full-size `Stocks/`), then measure, each
in a fresh process and on the same stack:

1. the limit proxy, stock_pipeline_job (in a worker: the step breakdown), ours as a user runs it
   (`dagster job execute`), the DuckDB engine, dlt and Sling (`peers.py`), in turn: `--warmup`
   untimed runs of each, then `--repeat` measured runs of each (medians reported), PostgreSQL
   settled before every run. Every run is also measured as a whole process (spawn to exit, CPU
   and peak RSS of its process tree): the peer comparison uses those figures, and checks each
   peer's table against ours (rows, companies, Σ value_change). A peer that is not installed is
   skipped and the report says so; a full run (or `--build-peers`) builds dlt's venv if missing.
   The DuckDB engine's CSV is then compared with ours line by line;
2. the course approach once (its row-by-row INSERTs stopped at `--course-budget` seconds and
   extrapolated, which the report says);
3. a scaling series of stock_pipeline_job: more files, then larger files.

Writes `<out>/<mode>.json` and `<out>/<mode>.md` and prints one summary line. `--quick` is a
small version (40 real files, a few hundred objects) that CI runs to keep this working.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import dataset, peers
from benchmarks.approaches import DUCKDB_OUTPUT_KEY
from benchmarks.compare import compare
from benchmarks.report import files_and_bytes_fit, linear_fit, write_reports
from benchmarks.worker import MARKER, hwm_bytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = dataset.REPO_ROOT
# The architecture issue's targets (medians of one invocation; peak RSS of the run process).
TARGETS = {"ours_over_limit_max": 1.3, "course_over_ours_min": 20.0, "peak_rss_max_bytes": 600e6}
# Measured in turn, alternating the order from one round to the next.
TIMED_APPROACHES = ["limit", "ours", "ours_cli", "duckdb", "dlt", "sling"]
# The peer comparison (issue 17): each loads S3 into a table, measured as a whole process from
# spawn to exit; ours as a user runs it (`dagster job execute`), whose table they are checked
# against. `ours` (execute_in_process in a worker) stays for the step breakdown.
WHOLE_PROCESS = ["ours_cli", "duckdb", "dlt", "sling"]
# Issue 17: ours faster than every peer (whole process, medians), peak RSS ≤ 2× DuckDB's.
PEER_RSS_OVER_DUCKDB_MAX = 2.0
# Scaling runs read files up to 4× the largest real one: lift the per-file limit for them only.
SCALING_RUN_CONFIG = {"resources": {"settings": {"config": {"max_file_bytes": 8_000_000}}}}


@dataclass
class Profile:
    """How big a benchmark: the full one, or the quick one CI runs."""

    mode: str
    real_files: int | None  # None: every file the filter names
    synthetic_files: int | None  # None: the whole rest of the manifest
    repeat: int
    course_budget_seconds: float
    file_counts: list[int] = field(default_factory=list)
    size_factors: list[int] = field(default_factory=list)
    size_series_files: int = 0
    scaling_repeat: int = 1  # runs per scaling point; the fastest is kept (least disturbed)
    # Untimed runs of each before the measured ones: the first run after the bucket is built
    # also creates the tables, the Dagster instance's storage and warms moto, and was the slowest
    # of its approach in most invocations (the limit proxy's: 6.5-8.0 s against 5.3-6.4 s).
    warmup: int = 0


FULL = Profile("full", None, None, 5, 30.0, [125, 250, 500, 1000], [2, 4], 250, 3, warmup=1)
QUICK = Profile("quick", 40, 160, 1, 1.0, [10, 20, 40], [2], 10, 1)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the stack and the bucket ---------------------------------------------------------------


def _child_env(stack_env: dict[str, str], dagster_home: Path) -> dict[str, str]:
    # The benchmark's own stack and default names, whatever the caller's shell points at.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_ASSETS_")}
    env.update(stack_env)
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start_stack(stack: Any, workdir: Path) -> tuple[dict[str, str], Path]:
    """Start the benchmark's local stack (exported into this process's environment) and make
    its Dagster instance folder (SQLite storage, telemetry off): (the stack's env, DAGSTER_HOME)."""
    _log(f"starting the local stack in {workdir}")
    stack_env = stack.start()
    os.environ.update(stack_env)
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert stack.moto.process is not None and stack.postgres is not None
    return stack_env, dagster_home


def build_bucket(client: Any, profile: Profile, source: dataset.DataSource) -> dict[str, Any]:
    """The source bucket: layout, filter, scripts, the real files and the synthetic rest."""
    from stock_assets.bucket_layout import ensure_layout, upload_filter_and_scripts
    from stock_assets.settings import STOCKS_PREFIX, Naming

    naming = Naming()
    started = time.perf_counter()
    ensure_layout(client, naming)
    names = dataset.filter_names(source)
    if profile.real_files is not None:
        names = names[: profile.real_files]
    filter_bytes = dataset.filter_file(names) if profile.real_files else source.filter_bytes
    upload_filter_and_scripts(client, naming.source_bucket, filter_bytes)
    real = dataset.real_files(source, set(names))
    manifest = [e for e in dataset.read_manifest(source) if e.file_name not in set(names)]
    # The real filter's other names must not appear as synthetic files in a quick bucket.
    all_real_names = set(dataset.filter_names(source))
    manifest = [e for e in manifest if e.file_name not in all_real_names]
    if profile.synthetic_files is not None:
        manifest = manifest[: profile.synthetic_files]
    bucket = naming.source_bucket

    def put_real(item: tuple[str, bytes]) -> int:
        client.put_object(Bucket=bucket, Key=STOCKS_PREFIX + item[0], Body=item[1])
        return len(item[1])

    def put_synthetic(entry: dataset.ManifestEntry) -> int:
        body = dataset.synthetic_file(entry)
        client.put_object(Bucket=bucket, Key=STOCKS_PREFIX + entry.file_name, Body=body)
        return len(body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        real_bytes = sum(pool.map(put_real, real.items()))
        synthetic_bytes = sum(pool.map(put_synthetic, manifest))
    return {
        "bucket": bucket,
        "source": source.note,
        "filter_names": names,
        "filter_bytes": filter_bytes,
        "real_files": len(real),
        "real_bytes": real_bytes,
        "synthetic_files": len(manifest),
        "synthetic_bytes": synthetic_bytes,
        "synthetic_manifest_bytes": sum(e.bytes for e in manifest),
        "objects_under_stocks": len(real) + len(manifest),
        "seconds": round(time.perf_counter() - started, 2),
        "real": real,
    }


# --- children -------------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) of a live process, and optionally of the children it has
    reaped (the kernel adds an exited child's time to its parent once it is waited for)."""
    try:
        times = process.cpu_times()
    except psutil.Error:  # gone: it costs nothing more
        return 0.0
    seconds = times.user + times.system
    if reaped_children:
        seconds += times.children_user + times.children_system
    return seconds


class _TreePeak(threading.Thread):
    """The peak memory of a process tree: every 0.1 s, Σ VmHWM over the process and its
    descendants, the largest sum kept. Each term is that process's exact peak so far, so for
    one process this is its peak (short of growth in its last 0.1 s), and for a tree (Sling's
    driver + binary) an upper bound of the simultaneous total, close when, as here, one
    process holds nearly all of it. Costs about 3 ms of CPU per sample (psutil reads /proc)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.largest = 0  # the largest single process's VmHWM seen (a sharded run's steps)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                pids = [self.root.pid, *(p.pid for p in self.root.children(recursive=True))]
            except psutil.Error:
                return
            peaks = [hwm_bytes(pid) for pid in pids]
            self.peak = max(self.peak, sum(peaks))
            self.largest = max(self.largest, *peaks)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


class Runner:
    """Spawns the workers; also accounts the CPU each run costs the client, moto and PostgreSQL.

    CPU seconds barely move when other work shares the machine, unlike wall time: on a busy
    shared machine they are the steadier comparison (reported next to the wall times).
    """

    def __init__(
        self, env: dict[str, str], log_dir: Path, moto_pid: int, pgdata: Path, cwd: Path = REPO_ROOT
    ) -> None:
        self.env = env
        self.cwd = cwd  # the processes' working directory (`benchmarks.ab`: each side's tree)
        self.database_url = env["STOCK_ASSETS_DATABASE_URL"]
        self.log_dir = log_dir
        self.moto = psutil.Process(moto_pid)
        self.pgdata = pgdata
        self.count = 0

    def _server_cpu(self) -> dict[str, float]:
        postgres = 0.0
        try:
            postmaster = psutil.Process(
                int((self.pgdata / "postmaster.pid").read_text().split()[0])
            )
            # Exited backends are in the postmaster's reaped children's time; add the live ones.
            postgres = _cpu_seconds(postmaster, reaped_children=True) + sum(
                _cpu_seconds(child) for child in postmaster.children()
            )
        except (OSError, ValueError, psutil.Error):
            pass
        return {"moto": _cpu_seconds(self.moto), "postgres": postgres}

    def _settle_server(self) -> None:
        """Every run starts from a settled server, so that none is billed for the maintenance
        the previous runs left due.

        VACUUM (ANALYZE): each load of two million rows makes autovacuum vacuum and analyze that
        table (about a second of server work), within its one-minute nap, so in the middle of
        whichever run came next. CHECKPOINT: the previous runs' rows get flushed now, not during
        the next run.
        """
        import psycopg2

        from stock_assets.database import psycopg2_dsn

        conn = psycopg2.connect(psycopg2_dsn(self.database_url))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM (ANALYZE)")
                cur.execute("CHECKPOINT")
        finally:
            conn.close()

    def spawn(
        self, spec: dict[str, Any], timeout: float = 1800, command: list[str] | None = None
    ) -> dict[str, Any]:
        """Run one approach in a fresh process: a `benchmarks.worker` (which prints its result
        line), or `command` (a peer, or `dagster job execute`: its result line is optional).

        Every run also gets `whole_process`: spawn to exit, the CPU of the whole process tree
        (wait4's rusage: the process and the children it reaped) plus moto's and PostgreSQL's
        over the same interval, and the tree's peak RSS (`_TreePeak`; a worker's own exact
        peak where it reports one).
        """
        self.count += 1
        self._settle_server()
        servers_before = self._server_cpu()
        log_path = self.log_dir / f"{self.count:02d}-{spec['approach']}.log"
        spec = {**spec, "spawned_at": time.time()}
        argv = command or [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=log, text=True
            )
            tree = _TreePeak(proc.pid)
            tree.start()
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                assert proc.stdout is not None
                stdout = proc.stdout.read()
                # wait4, not wait(): it returns this child's own rusage (the CPU of the tree
                # it reaped), which nothing else running here can disturb.
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
                peak_sampled = tree.stop()
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - spec["spawned_at"]
        lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
        if proc.returncode != 0 or (command is None and not lines):
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"{spec['approach']} failed ({proc.returncode}):\n{tail}")
        result = json.loads(lines[-1][len(MARKER) :]) if lines else {"success": True}
        result["process_wall_seconds"] = round(wall, 4)
        time.sleep(0.3)  # let the postmaster reap the run's backends
        servers = self._server_cpu()
        process_cpu = usage.ru_utime + usage.ru_stime
        server_cpu = {k: round(servers[k] - servers_before[k], 3) for k in servers}
        whole_cpu = {"run_process": round(process_cpu, 3), **server_cpu}
        whole_cpu["total"] = round(sum(whole_cpu.values()), 3)
        result["whole_process"] = {
            "wall_seconds": round(wall, 4),
            "cpu_seconds": whole_cpu,
            # Sampled, and exact where a worker read its own at the end. Not wait4's
            # ru_maxrss: it counts the runner's memory the child shared until its exec.
            "peak_rss_bytes": max(peak_sampled, result.get("peak_rss_bytes", 0)),
            "largest_process_peak_rss_bytes": max(tree.largest, result.get("peak_rss_bytes", 0)),
        }
        if "process_start_cpu_seconds" in result:  # a worker: its run alone, as before
            cpu = {
                "run_process": round(process_cpu - result["process_start_cpu_seconds"], 3),
                **server_cpu,
            }
            cpu["total"] = round(sum(cpu.values()), 3)
            result["cpu_seconds"] = cpu
        return result


def _s3_sha256(client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _s3_body(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _duckdb_missing() -> str | None:
    """Why the DuckDB engine cannot run here (its packages are in the bench extra), or None."""
    import importlib.util

    for module in ("duckdb", "duckdb_extensions", "duckdb_extension_httpfs"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[bench]'"
    return None


def _table_rows(database_url: str, table: str) -> int:
    import psycopg2

    from stock_assets.database import psycopg2_dsn

    with psycopg2.connect(psycopg2_dsn(database_url)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _cpu_median(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: _median([r["cpu_seconds"][k] for r in runs]) for k in runs[0]["cpu_seconds"]}


def _ours_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs, per asset and for Dagster's own overhead."""
    steps = sorted({k for r in runs for k in r["step_seconds"]})
    per_step = {k: _median([r["step_seconds"].get(k, 0.0) for r in runs]) for k in steps}
    overhead = [r["run_seconds"] - sum(r["step_seconds"].values()) for r in runs]
    # Whatever timings the CSV asset records (`*_seconds`; the set changes with the pipeline).
    csv_meta = [r["asset_metadata"].get("historical_stock_data_csv", {}) for r in runs]
    phase_keys = sorted({k for meta in csv_meta for k in meta if k.endswith("_seconds")})
    csv_phases = {
        key: _median([meta[key] for meta in csv_meta if meta.get(key) is not None])
        for key in phase_keys
    }
    load = [
        r["asset_metadata"]["historical_stocks_data"]["load_seconds"]
        for r in runs
        if "load_seconds" in r["asset_metadata"].get("historical_stocks_data", {})
    ]
    run_seconds = _median([r["run_seconds"] for r in runs])
    rows = runs[0]["rows_written"] or 0
    return {
        "run_seconds": run_seconds,
        "cpu_seconds": _cpu_median(runs),
        "run_seconds_min": round(min(r["run_seconds"] for r in runs), 4),
        "rows_per_second": round(rows / run_seconds) if run_seconds else None,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "per_asset_step_seconds": per_step,
        "csv_asset_phases": csv_phases,
        "table_asset_load_seconds": _median(load) if load else None,
        "dagster_overhead": {
            "process_start_seconds": _median([r["process_start_seconds"] for r in runs]),
            "run_minus_steps_seconds": _median(overhead),
            "note": "process start: interpreter + imports + loading the definitions (excluded "
            "from ours); run minus steps: run setup, step launches and run bookkeeping between "
            "and around the four steps (included in ours)",
        },
    }


def _other_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of the limit proxy or the DuckDB engine."""
    run_seconds = statistics.median(r["run_seconds"] for r in runs)
    return {
        "run_seconds": _median([r["run_seconds"] for r in runs]),
        "cpu_seconds": _cpu_median(runs),
        "run_seconds_min": round(min(r["run_seconds"] for r in runs), 4),
        "phases": {k: _median([r["phases"][k] for r in runs]) for k in runs[0]["phases"]},
        "rows_per_second": round(runs[0]["rows_written"] / run_seconds) if run_seconds else None,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "process_start_seconds": _median([r["process_start_seconds"] for r in runs]),
    }


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total
    versions = {"python": platform.python_version()}
    for module in ["dagster", "pyarrow", "numpy", "boto3", "moto", "psycopg2", "pandas", "duckdb"]:
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    commit = dirty = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout
        dirty = bool(status.strip())
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_bytes": memory,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _command(approach: str, spec: dict[str, Any], workdir: Path) -> list[str] | None:
    """The process a whole-process approach runs (None: a `benchmarks.worker`)."""
    from stock_assets.jobs import STOCK_PIPELINE_JOB

    if approach == "ours_cli":
        # As a user runs it: the venv's `dagster` script, a fresh interpreter that loads the
        # code location and runs the job in-process (the job's executor), recorded in
        # DAGSTER_HOME like any run.
        dagster = Path(sys.executable).with_name("dagster")
        module = "stock_assets.definitions"
        return [str(dagster), "job", "execute", "-m", module, "-j", STOCK_PIPELINE_JOB]
    if approach == "dlt":
        spec = {**spec, "pipelines_dir": str(workdir / "dlt_pipelines")}
        return [str(peers.peers_python()), "-m", "benchmarks.peers", "dlt", json.dumps(spec)]
    if approach == "sling":
        spec = {**spec, "sling_home": str(workdir / "sling_home")}
        return [sys.executable, "-m", "benchmarks.peers", "sling", json.dumps(spec)]
    return None


def _seconds(result: dict[str, Any]) -> float:
    """A run's own time where the worker timed it, else spawn to exit."""
    return result.get("run_seconds") or result["whole_process"]["wall_seconds"]


def _whole_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the whole-process figures (peak RSS: the largest, as for the other rows)."""
    whole = [r["whole_process"] for r in runs]
    return {
        "wall_seconds": _median([w["wall_seconds"] for w in whole]),
        "wall_seconds_min": round(min(w["wall_seconds"] for w in whole), 4),
        "cpu_seconds": {
            k: _median([w["cpu_seconds"][k] for w in whole]) for k in whole[0]["cpu_seconds"]
        },
        "peak_rss_bytes": max(w["peak_rss_bytes"] for w in whole),
    }


def _peers_report(
    runs: dict[str, list[dict[str, Any]]], missing: dict[str, str | None]
) -> dict[str, Any]:
    """Ours (`dagster job execute`) and each peer, whole process, with each peer's table
    checked against ours: rows, companies, Σ value_change."""
    reference = runs["ours_cli"][0]["table_check"]
    result: dict[str, Any] = {}
    for name in WHOLE_PROCESS:
        if missing.get(name):
            result[name] = {"skipped": missing[name]}
            continue
        checks = [r["table_check"] for r in runs[name]]
        result[name] = {
            "summary": _whole_summary(runs[name]),
            "table": checks[-1],
            "verification_passed": all(check == reference for check in checks),
            "runs": [
                {
                    "whole_process": r["whole_process"],
                    "table_check": r["table_check"],
                    **({"phases": r["phases"]} if "phases" in r else {}),
                }
                for r in runs[name]
            ],
        }
    return result


def _peer_targets(peers_report: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 17's targets; None where a peer it needs was skipped."""
    ours = peers_report["ours_cli"]["summary"]
    others = [peers_report[name] for name in WHOLE_PROCESS[1:]]
    faster = None
    if all("summary" in peer for peer in others):
        faster = all(ours["wall_seconds"] < peer["summary"]["wall_seconds"] for peer in others)
    duckdb = peers_report["duckdb"].get("summary")
    rss = None
    if duckdb:
        limit = PEER_RSS_OVER_DUCKDB_MAX * duckdb["peak_rss_bytes"]
        rss = ours["peak_rss_bytes"] <= limit
    return {"ours_faster_than_every_peer": faster, "peak_rss_within_2x_duckdb": rss}


# --- the benchmark --------------------------------------------------------------------------


def run_benchmark(
    profile: Profile, out_dir: Path, keep: bool = False, build_peers: bool = False
) -> dict[str, Any]:
    import boto3

    from stock_assets.local.stack import LocalStack
    from stock_assets.settings import OUTPUT_KEY, TABLE_NAME

    workdir = Path(tempfile.mkdtemp(prefix=f"stock-bench-{profile.mode}-"))
    stack = LocalStack(workdir=workdir)
    report: dict[str, Any] = {
        "schema": 1,
        "mode": profile.mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": asdict(profile),
        "targets": TARGETS,
    }
    load_before = os.getloadavg()
    try:
        stack_env, dagster_home = start_stack(stack, workdir)
        runner = Runner(
            _child_env(stack_env, dagster_home),
            workdir,
            stack.moto.process.pid,
            stack.postgres.pgdata,
        )
        client = boto3.client("s3")
        source = dataset.find_data_source()
        _log(f"building the source bucket ({profile.mode}; {source.note})")
        bucket = build_bucket(client, profile, source)
        real = bucket.pop("real")
        filter_bytes = bucket.pop("filter_bytes")
        names = bucket.pop("filter_names")
        report["dataset"] = bucket
        _log(
            f"bucket: {bucket['objects_under_stocks']} objects under Stocks/ "
            f"({bucket['real_files']} real, {bucket['synthetic_files']} synthetic, "
            f"{(bucket['real_bytes'] + bucket['synthetic_bytes']) / 1e6:.0f} MB) "
            f"in {bucket['seconds']}s"
        )
        database_url = stack_env["STOCK_ASSETS_DATABASE_URL"]
        common = {"bucket": bucket["bucket"]}

        if build_peers and peers.dlt_missing():
            _log("building the dlt peer's venv (benchmarks/.peers-venv) …")
            try:
                peers.install_peers_venv()
            except (OSError, subprocess.CalledProcessError) as error:
                _log(f"could not build it ({error}): the dlt peer is skipped")
        missing = {
            "duckdb": _duckdb_missing(),
            "dlt": peers.dlt_missing(),
            "sling": peers.sling_missing(),
        }
        duckdb_missing = missing["duckdb"]
        for name, reason in missing.items():
            if reason:
                _log(f"{name} skipped: {reason}")
        approaches = [a for a in TIMED_APPROACHES if not missing.get(a)]
        runs: dict[str, list[dict[str, Any]]] = {approach: [] for approach in approaches}
        ours_runs, limit_runs, duckdb_runs = runs["ours"], runs["limit"], runs.get("duckdb", [])
        checks: dict[str, Any] = {
            "ours_csv_equals_limit_csv": [],
            "ours_table_rows_equal_csv": [],
            "duckdb_table_rows_equal_csv": [],
        }

        def spawn(approach: str) -> dict[str, Any]:
            spec = {**common, "approach": approach}
            return runner.spawn(spec, command=_command(approach, spec, workdir))

        warmups = []
        for approach in approaches * profile.warmup:
            result = spawn(approach)
            warmups.append({"approach": approach, "run_seconds": _seconds(result)})
            _log(f"{approach:8s} warm-up run (not counted): {_seconds(result):.2f}s")
        report["warmup_runs"] = warmups
        for i in range(profile.repeat):
            # Each approach goes first, in the middle and last in turn: none always follows
            # the same one (the server's leftovers, the host's drift).
            order = approaches[i % len(approaches) :] + approaches[: i % len(approaches)]
            for approach in order:
                result = spawn(approach)
                if approach == "ours":
                    if not result["success"]:
                        raise RuntimeError(f"stock_pipeline_job failed: {result['failure']}")
                    result["csv_sha256"] = _s3_sha256(client, bucket["bucket"], OUTPUT_KEY)
                    checks["ours_table_rows_equal_csv"].append(
                        _table_rows(database_url, TABLE_NAME) == result["rows_written"]
                    )
                elif approach == "duckdb":
                    if not result["success"]:
                        raise RuntimeError(f"the DuckDB engine failed: {result}")
                    result["csv_sha256"] = _s3_sha256(client, bucket["bucket"], DUCKDB_OUTPUT_KEY)
                    checks["duckdb_table_rows_equal_csv"].append(
                        _table_rows(database_url, result["table"]) == result["rows_written"]
                    )
                if approach in WHOLE_PROCESS:
                    # The table as loaded by this run, before the next run replaces it.
                    table = TABLE_NAME if approach == "ours_cli" else result["table"]
                    result["table_check"] = peers.verify_table(database_url, table)
                runs[approach].append(result)
                whole = result["whole_process"]
                in_run = (
                    f"; run alone {result['run_seconds']:.2f}s "
                    f"(+{result['process_start_seconds']:.2f}s process start)"
                    if "process_start_seconds" in result
                    else ""
                )
                _log(
                    f"{approach:8s} run {i + 1}/{profile.repeat}: whole process "
                    f"{whole['wall_seconds']:.2f}s, {whole['cpu_seconds']['total']:.1f} CPU-s, "
                    f"peak RSS {whole['peak_rss_bytes'] / 1e6:.0f} MB{in_run}"
                )
        checks["ours_csv_equals_limit_csv"] = [
            o["csv_sha256"] == limit_runs[0]["csv_sha256"] for o in ours_runs
        ]
        if duckdb_runs:
            checks["duckdb_csv_same_every_run"] = (
                len({r["csv_sha256"] for r in duckdb_runs}) == 1
                and len({r["csv_sha256"] for r in ours_runs}) == 1
            )
            # Each wrote the same bytes in every run (just checked), so the objects left by the
            # last runs stand for all.
            _log("comparing the DuckDB engine's CSV with ours, line by line")
            duckdb_csv = compare(
                _s3_body(client, bucket["bucket"], OUTPUT_KEY),
                _s3_body(client, bucket["bucket"], DUCKDB_OUTPUT_KEY),
            )
            _log(
                "DuckDB CSV identical to ours: "
                f"{duckdb_csv['identical']} ({duckdb_csv['lines_differing']:,} lines differ)"
            )

        try:
            import pandas  # noqa: F401

            budget = profile.course_budget_seconds
            _log(f"course approach (INSERTs capped at {budget:.0f}s, then extrapolated) …")
            course = runner.spawn({**common, "approach": "course", "insert_budget_seconds": budget})
            course["csv_equals_ours"] = course["csv_sha256"] == ours_runs[0]["csv_sha256"]
            _log(
                f"course: {course['run_seconds']:.1f}s "
                f"{'(extrapolated)' if course['extrapolated'] else ''}, "
                f"{course['rows_inserted']} of {course['rows_written']} rows inserted in budget"
            )
        except ImportError:
            course = {"skipped": "pandas is not installed: pip install -e '.[bench]'"}
            _log(f"course approach skipped: {course['skipped']}")

        ours = _ours_summary(ours_runs)
        limit = _other_summary(limit_runs)
        report["ours"] = {"summary": ours, "runs": ours_runs}
        report["limit"] = {"summary": limit, "runs": limit_runs}
        if duckdb_runs:
            report["duckdb"] = {
                "summary": _other_summary(duckdb_runs),
                "runs": duckdb_runs,
                "csv_vs_ours": duckdb_csv,
            }
        else:
            report["duckdb"] = {"skipped": duckdb_missing}
        report["course"] = course
        report["peers"] = _peers_report(runs, missing)
        report["verification"] = {
            **checks,
            "rows_written": ours_runs[0]["rows_written"],
            "rows_read": ours_runs[0]["rows_read"],
            "limit_rows": limit_runs[0]["rows_written"],
        }
        ratios = {
            "ours_over_limit": round(ours["run_seconds"] / limit["run_seconds"], 3),
            "ours_over_limit_best_runs": round(
                ours["run_seconds_min"] / limit["run_seconds_min"], 3
            ),
        }
        ratios["ours_over_limit_cpu"] = round(
            ours["cpu_seconds"]["total"] / limit["cpu_seconds"]["total"], 3
        )
        if "run_seconds" in course:
            ratios["course_over_ours"] = round(course["run_seconds"] / ours["run_seconds"], 2)
        if duckdb_runs:
            engine = report["duckdb"]["summary"]
            ratios["duckdb_over_ours"] = round(engine["run_seconds"] / ours["run_seconds"], 3)
            ratios["duckdb_over_ours_cpu"] = round(
                engine["cpu_seconds"]["total"] / ours["cpu_seconds"]["total"], 3
            )
            ratios["duckdb_over_limit"] = round(engine["run_seconds"] / limit["run_seconds"], 3)
        ours_whole = report["peers"]["ours_cli"]["summary"]
        for name in WHOLE_PROCESS[1:]:
            if "summary" in report["peers"][name]:
                peer = report["peers"][name]["summary"]
                ratios[f"{name}_over_ours_whole_process"] = round(
                    peer["wall_seconds"] / ours_whole["wall_seconds"], 3
                )
                ratios[f"{name}_over_ours_whole_process_cpu"] = round(
                    peer["cpu_seconds"]["total"] / ours_whole["cpu_seconds"]["total"], 3
                )
        report["ratios"] = ratios

        report["scaling"] = run_scaling(profile, runner, client, bucket["bucket"], names, real)
        client.put_object(
            Bucket=bucket["bucket"], Key="CompanyNames/top_companies.txt", Body=filter_bytes
        )
    finally:
        stack.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["conditions"] = {
        **_machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "shared 2-core machine: other sessions' tests may run at the same time; "
        "compare ratios measured in the same invocation, not absolute seconds across runs",
    }
    report["targets_met"] = {
        "ours_over_limit": report["ratios"]["ours_over_limit"] <= TARGETS["ours_over_limit_max"],
        "course_over_ours": report["ratios"].get("course_over_ours", 0)
        >= TARGETS["course_over_ours_min"],
        "peak_rss": report["ours"]["summary"]["peak_rss_bytes"] <= TARGETS["peak_rss_max_bytes"],
        "linear_scaling": report["scaling"]["files_and_bytes_fit"]["r2"] >= 0.98
        if report["scaling"]["files_and_bytes_fit"]
        else None,
        **_peer_targets(report["peers"]),
    }
    report["summary"] = summary_line(report)
    write_reports(report, out_dir)
    return report


def run_scaling(
    profile: Profile,
    runner: Runner,
    client: Any,
    bucket: str,
    names: list[str],
    real: dict[str, bytes],
) -> dict[str, Any]:
    """stock_pipeline_job on more files, then on larger files, in the same bucket."""
    from stock_assets.settings import FILTER_KEY, STOCKS_PREFIX

    points_spec = [(n, 1) for n in profile.file_counts if n <= len(names)]
    points_spec += [(profile.size_series_files, f) for f in profile.size_factors]
    # Upload every enlarged file first, so every point sees the same bucket listing.
    uploads = [
        (dataset.enlarged_name(name, factor), dataset.enlarge(real[name], factor))
        for factor in profile.size_factors
        for name in names[: profile.size_series_files]
        if name in real
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda item: client.put_object(
                    Bucket=bucket, Key=STOCKS_PREFIX + item[0], Body=item[1]
                ),
                uploads,
            )
        )
    points = []
    for files, factor in points_spec:
        chosen = names[:files]
        if factor > 1:
            chosen = [dataset.enlarged_name(n, factor) for n in chosen]
        client.put_object(Bucket=bucket, Key=FILTER_KEY, Body=dataset.filter_file(chosen))
        runs = []
        spec = {"approach": "ours", "bucket": bucket, "run_config": SCALING_RUN_CONFIG}
        for _ in range(profile.scaling_repeat):
            runs.append(runner.spawn(spec))
            if not runs[-1]["success"]:
                raise RuntimeError(f"scaling run failed: {runs[-1]['failure']}")
        result = min(runs, key=lambda r: r["run_seconds"])
        point = {
            "files": files,
            "size_factor": factor,
            "bytes_read": result["bytes_read"],
            "rows_written": result["rows_written"],
            "run_seconds": result["run_seconds"],
            # One step makes the CSV and loads the table (historical_stock_data).
            "output_step_seconds": result["step_seconds"].get("historical_stock_data"),
            "peak_rss_bytes": result["peak_rss_bytes"],
            "cpu_seconds": result["cpu_seconds"],
            "all_run_seconds": [r["run_seconds"] for r in runs],
        }
        points.append(point)
        _log(
            f"scaling {files} files ×{factor}: {point['bytes_read'] / 1e6:.1f} MB, "
            f"{point['rows_written']} rows, {point['run_seconds']:.2f}s, "
            f"peak RSS {point['peak_rss_bytes'] / 1e6:.0f} MB"
        )
    mb = [p["bytes_read"] / 1e6 for p in points]
    files = [p["files"] for p in points]
    fit = linear_fit(mb, [p["run_seconds"] for p in points])
    fit2 = files_and_bytes_fit(files, mb, [p["run_seconds"] for p in points])
    cpu_fit = files_and_bytes_fit(files, mb, [p["cpu_seconds"]["total"] for p in points])
    return {
        "points": points,
        "fit": fit,
        "files_and_bytes_fit": fit2,
        "cpu_fit": cpu_fit,
        "extra_objects_under_stocks": len(uploads),
        "note": "all points run on the same bucket (the full Stocks/ plus the enlarged files); "
        "larger files are real files repeated back in time; max_file_bytes lifted to 8 MB",
    }


def summary_line(report: dict[str, Any]) -> str:
    ours = report["ours"]["summary"]
    limit = report["limit"]["summary"]
    course = report["course"]
    ratios = report["ratios"]
    rows = report["verification"]["rows_written"]
    parts = [
        f"{report['mode']}: ours {ours['run_seconds']:.2f}s for {rows:,} rows "
        f"({ours['rows_per_second']:,} rows/s, peak RSS {ours['peak_rss_bytes'] / 1e9:.2f} GB, "
        f"+{ours['dagster_overhead']['process_start_seconds']:.1f}s Dagster process start)",
        f"limit {limit['run_seconds']:.2f}s → ours/limit {ratios['ours_over_limit']:.2f}",
    ]
    if "run_seconds" in course:
        parts.append(
            f"course {course['run_seconds']:.0f}s"
            f"{' (extrapolated)' if course.get('extrapolated') else ''} → course/ours "
            f"{ratios['course_over_ours']:.1f}×"
        )
    else:
        parts.append("course skipped")
    if "summary" in report["duckdb"]:
        engine = report["duckdb"]["summary"]
        identical = report["duckdb"]["csv_vs_ours"]["identical"]
        parts.append(
            f"duckdb {engine['run_seconds']:.2f}s → duckdb/ours {ratios['duckdb_over_ours']:.2f}, "
            f"CSV {'identical to ours' if identical else 'differs from ours'}"
        )
    else:
        parts.append("duckdb skipped")
    whole = []
    for name in WHOLE_PROCESS:
        peer = report["peers"][name]
        label = "ours" if name == "ours_cli" else name
        if "summary" not in peer:
            whole.append(f"{label} skipped")
            continue
        verified = (
            ""
            if name == "ours_cli"
            else (" (rows verified)" if peer["verification_passed"] else " (rows DIFFER)")
        )
        whole.append(f"{label} {peer['summary']['wall_seconds']:.2f}s{verified}")
    parts.append("whole process: " + ", ".join(whole))
    fit = report["scaling"]["files_and_bytes_fit"] or report["scaling"]["fit"]
    if fit:
        parts.append(f"scaling r² {fit['r2']:.3f}")
    met = report["targets_met"]
    parts.append("targets " + ("met" if all(v is not False for v in met.values()) else "NOT met"))
    return " | ".join(parts)


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the small version CI runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON + MD go")
    parser.add_argument("--repeat", type=int, help="runs of ours and of the limit proxy")
    parser.add_argument("--warmup", type=int, help="untimed runs of each before those")
    parser.add_argument("--course-budget", type=float, help="seconds of course INSERTs")
    parser.add_argument("--keep", action="store_true", help="keep the stack folder and logs")
    parser.add_argument(
        "--build-peers",
        action="store_true",
        help="build the dlt peer's venv (benchmarks/.peers-venv) if missing; a full run does",
    )
    args = parser.parse_args(argv)
    # Stopped from a script (SIGTERM, or SIGINT that background jobs ignore): still run the
    # `finally` that stops moto and PostgreSQL instead of leaving them behind.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    profile = QUICK if args.quick else FULL
    if args.repeat:
        profile.repeat = args.repeat
    if args.warmup is not None:
        profile.warmup = args.warmup
    if args.course_budget is not None:
        profile.course_budget_seconds = args.course_budget
    build_peers = args.build_peers or profile.mode == "full"
    report = run_benchmark(profile, args.out, keep=args.keep, build_peers=build_peers)
    print(report["summary"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
