"""A real Dagster deployment for integration tests: webserver + daemon, Postgres-backed instance.

It runs exactly the commands the containers run (see docker/), with the repository's own
`dagster.yaml` and `workspace.yaml`, against the local stack. Runs are launched through the
webserver's GraphQL API, as the UI, the Airflow DAG or a sensor would do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg2

from stock_assets.local.stack import LocalStack, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 240, poll: float = 1.0) -> T:
    """Poll until `predicate()` is truthy; the machine may be busy, so timeouts are generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _end_session(session: int, grace: float = 5.0) -> None:
    """Stop whatever is left of a process's session once the process itself has exited: a code
    server the webserver or the daemon started (`dagster api grpc`) outlived them otherwise,
    for hours after a test, heartbeat or not."""
    try:
        os.killpg(session, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return  # nothing left
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(session, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)


def _reset_signals() -> None:
    # Children must honour SIGINT/SIGTERM even when started from a background shell.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def dagster_storage_url(stack: LocalStack, database: str) -> str:
    """A SQLAlchemy URL to a fresh database in the embedded server (socket connection)."""
    url = stack.env["STOCK_ASSETS_DATABASE_URL"]
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not cur.fetchone():
            cur.execute(f'CREATE DATABASE "{database}"')
    conn.close()
    socket_dir = url.split("host=", 1)[1]
    return f"postgresql+psycopg2://postgres@/{database}?host={socket_dir}"


TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 200) {
      status timestamp runIds error { message errorChain { error { message } } }
    } } }
  }
}
"""
# The marker sensor and the two run-status sensors that send the emails.
SENSORS = ("success_marker_sensor", "sns_on_pipeline_success", "sns_on_pipeline_failure")

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """One GraphQL request to the webserver at `url`; its data, or RuntimeError on errors."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        body = json.load(response)
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


@dataclass
class DagsterDeployment:
    stack: LocalStack
    home: Path
    port: int = field(default_factory=free_port)
    env_overrides: dict[str, str] = field(default_factory=dict)
    workspace: Path = REPO_ROOT / "workspace.yaml"
    # Replaces the default webserver/daemon command lines, e.g. with docker-compose.yaml's own
    # (adapted to loopback) to run the container commands outside Docker.
    commands: dict[str, list[str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.stack.env)
        env["DAGSTER_HOME"] = str(self.home)
        env["DAGSTER_POSTGRES_URL"] = dagster_storage_url(self.stack, f"dagster_{self.home.name}")
        env.update(self.env_overrides)
        return env

    def prepare(self) -> None:
        """DAGSTER_HOME with the repository's dagster.yaml, and the environment of every process."""
        if getattr(self, "_env", None) is not None:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "dagster.yaml", self.home / "dagster.yaml")
        self._env = self.env

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        """Another process of the deployment (e.g. the user code gRPC server), same environment."""
        self.prepare()
        self._spawn(name, command)
        return self.processes[name]

    def start(self, daemon: bool = True) -> DagsterDeployment:
        self.prepare()
        self._spawn(
            "webserver",
            self.commands.get("webserver")
            or [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
                "-w", str(self.workspace)],
        )  # fmt: skip
        if daemon:
            self.start_daemon()
        self.wait_until_ready()
        return self

    def start_daemon(self) -> None:
        self._spawn(
            "daemon",
            self.commands.get("daemon")
            or [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
        )

    def stop_daemon(self) -> None:
        self._stop("daemon")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.processes[name] = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_reset_signals,
            # Its own session: the code servers it starts can be found and stopped with it.
            start_new_session=True,
        )

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _end_session(process.pid)

    def stop(self) -> None:
        # Newest first: the webserver and daemon before a code server they depend on.
        for name in reversed(list(self.processes)):
            self._stop(name)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.graphql("{ version }")
                if data.get("version"):
                    return
            except OSError:
                pass
            if self.processes["webserver"].poll() is not None:
                raise RuntimeError(f"webserver exited:\n{self.log('webserver')[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"webserver not ready:\n{self.log('webserver')[-3000:]}")

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.url, query, variables)

    def launch_run(
        self, job: str = "stock_pipeline_job", tags: dict[str, str] | None = None
    ) -> str:
        params = {
            "selector": {
                "repositoryLocationName": "stock_assets",
                "repositoryName": "__repository__",
                "jobName": job,
            },
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
            },
        }
        result = self.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun failed: {result}")
        return result["run"]["runId"]

    def instance(self):
        """A DagsterInstance on the same storage, for reading runs and events in tests."""
        from dagster import DagsterInstance

        os.environ["DAGSTER_POSTGRES_URL"] = self._env["DAGSTER_POSTGRES_URL"]
        return DagsterInstance.from_config(str(self.home))

    def ticks(self, sensor: str) -> list[dict[str, Any]]:
        """The sensor's latest ticks, newest first (status, timestamp, run ids, error)."""
        selector = {
            "repositoryLocationName": "stock_assets",
            "repositoryName": "__repository__",
            "sensorName": sensor,
        }
        result = self.graphql(TICKS, {"selector": selector})["sensorOrError"]
        assert result["__typename"] == "Sensor", result
        ticks = result["sensorState"]["ticks"]
        for tick in ticks:  # the error's message with its causes' (Dagster wraps user errors)
            if error := tick.get("error"):
                chain = [link["error"]["message"] for link in error.pop("errorChain") or []]
                error["message"] = "\n".join([error["message"], *chain])
        return ticks

    def wait_for_ticks(self, sensor: str, after: float, count: int = 1) -> None:
        """Wait until `sensor` has completed `count` ticks that started after `after` (epoch s)."""
        wait_until(
            lambda: sum(
                1 for t in self.ticks(sensor) if t["timestamp"] > after and t["status"] != "STARTED"
            ) >= count,
            f"{count} tick(s) of {sensor}",
        )  # fmt: skip

    def wait_for_sensors(self) -> None:
        """A run-status sensor's first tick only records where the event log is: runs that end
        before it would never be notified. Wait for every sensor's first tick."""
        for sensor in SENSORS:
            self.wait_for_ticks(sensor, after=0)

    def marker_runs(self, key: str) -> list:
        """The runs the marker sensor started for `key` (tags hold long keys shortened)."""
        from dagster import RunsFilter

        from stock_assets.notifications import MARKER_KEYS_TAG, shorten_key

        if getattr(self, "_instance", None) is None:
            self._instance = self.instance()
        runs = self._instance.get_runs(
            filters=RunsFilter(tags={"dagster/sensor_name": "success_marker_sensor"})
        )
        return [
            r for r in runs if shorten_key(key) in json.loads(r.tags.get(MARKER_KEYS_TAG, "[]"))
        ]

    def wait_for_run(self, run_id: str, timeout: float = 180) -> str:
        """Wait for a terminal status; returns it (SUCCESS, FAILURE, CANCELED)."""
        query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.graphql(query, {"id": run_id})["runOrError"].get("status")
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        raise TimeoutError(
            f"run {run_id} not finished after {timeout}s:\n{self.log('daemon')[-3000:]}"
        )
