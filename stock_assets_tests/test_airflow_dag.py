"""The Airflow shim DAG (airflow/dags/stock_pipeline.py) on real Airflow 3 against real Dagster.

Airflow runs from its own virtualenv (airflow_env.py: built once, ~35 s, then cached), with only
airflow/requirements.txt installed. Dagster is a real webserver + daemon with the PostgreSQL-backed
dagster.yaml on the local stack (moto + embedded PostgreSQL), including the SNS sensors, whose
emails moto keeps. The DAG runs with `airflow dags test` (in-process, the whole DAG run), and once
through `airflow standalone`, the command of docker-compose.yaml's `airflow` service, triggered
over Airflow's REST API.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from dagster import RunsFilter
from psycopg2 import sql

from stock_assets.local.stack import LocalStack, free_port
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, TABLE_NAME, Naming
from stock_assets_tests.airflow_env import DAGS_FOLDER, airflow_env, ensure_airflow_venv
from stock_assets_tests.compose import service
from stock_assets_tests.deployment import DagsterDeployment, wait_until

T = TypeVar("T")
DAG_ID = "stock_pipeline"
TASK_ID = "run_stock_pipeline_job"
NAMING = Naming()
SUCCESS_SUBJECT = "Dora_Explorer_Pipeline_Success"
FAILURE_SUBJECT = "Dora_Explorer_Pipeline_Failure"
LAUNCHED = re.compile(r"Dagster run ([0-9a-f-]{36}) launched: (\S+)")

SENSOR = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1) { status } } }
  }
}
"""


@pytest.fixture(scope="module")
def airflow_venv() -> Path:
    return ensure_airflow_venv()


@pytest.fixture(scope="module")
def airflow_home(airflow_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    result = subprocess.run(
        [str(airflow_venv / "bin" / "airflow"), "db", "migrate"],
        env=airflow_env(airflow_venv, home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def deployment(
    local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDeployment]:
    port = free_port()
    deployment = DagsterDeployment(
        stack=local_stack,
        home=tmp_path_factory.mktemp("airflow_dagster_home"),
        port=port,
        env_overrides={
            # Notifications go out within seconds of a run ending (default 15 s).
            "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS": "2",
            "STOCK_ASSETS_UI_URL": f"http://127.0.0.1:{port}",
        },
    )
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def wait_for_first_tick(deployment: DagsterDeployment, name: str) -> None:
    """Run-status sensors only start their cursor on their first tick: a run that ends before
    it would never be notified. Wait for that tick (the deployment is fresh for this module)."""
    selector = {
        "repositoryLocationName": "stock_assets",
        "repositoryName": "__repository__",
        "sensorName": name,
    }

    def ticks() -> list[dict[str, Any]]:
        result = deployment.graphql(SENSOR, {"selector": selector})["sensorOrError"]
        assert result["__typename"] == "Sensor", result
        return result["sensorState"]["ticks"]

    wait_until(ticks, f"a first tick of {name}")


@pytest.fixture
def ready_stack(seeded_stack: LocalStack) -> LocalStack:
    """The sample data seeded, and the SNS topic the notification sensors publish to."""
    boto3.client("sns").create_topic(Name=NAMING.sns_topic)
    return seeded_stack


def dags_test(
    venv: Path, home: Path, extra_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "airflow"), "dags", "test", DAG_ID],
        env=airflow_env(venv, home, extra_env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def launched(output: str) -> tuple[str, str]:
    match = LAUNCHED.search(output)
    assert match, f"no 'Dagster run … launched' line in the Airflow output:\n{output[-5000:]}"
    return match.group(1), match.group(2)


def run_status(deployment: DagsterDeployment, run_id: str) -> str:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    return deployment.graphql(query, {"id": run_id})["runOrError"]["status"]


def notifications(stack: LocalStack, subject: str, run_id: str) -> list[Any]:
    from stock_assets.local.sns_inbox import sent_messages

    return [
        m
        for m in sent_messages(stack.moto.endpoint_url, NAMING.sns_topic)
        if m.subject == subject and run_id in m.message
    ]


def test_dag_runs_the_dagster_job_and_waits_for_it(
    airflow_venv: Path, airflow_home: Path, deployment: DagsterDeployment, ready_stack, db
) -> None:
    wait_for_first_tick(deployment, "sns_on_pipeline_success")
    # Configured the usual way: an Airflow HTTP connection (here from the environment, as
    # AIRFLOW_CONN_*), with a separate URL for people; the Variable sets the poll interval.
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": deployment.port,
        "extra": {"ui_url": "http://dagster.example.test"},
    }
    result = dags_test(
        airflow_venv,
        airflow_home,
        {
            "AIRFLOW_CONN_DAGSTER_DEFAULT": json.dumps(connection),
            "AIRFLOW_VAR_STOCK_ASSETS_DAGSTER": json.dumps({"poll_seconds": 1}),
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "state=success" in output
    run_id, url = launched(output)
    assert url == f"http://dagster.example.test/runs/{run_id}"
    assert "from connection 'dagster_default'" in output

    assert run_status(deployment, run_id) == "SUCCESS"
    tags = deployment.instance().get_run_by_id(run_id).tags
    assert tags["stock_assets/trigger"] == "airflow"
    assert tags["airflow/dag_id"] == DAG_ID
    assert tags["airflow/run_id"].startswith("manual__")
    assert tags["airflow/try_number"] == "1"

    # The table holds exactly the CSV the run wrote.
    body = boto3.client("s3").get_object(Bucket=NAMING.source_bucket, Key=OUTPUT_KEY)["Body"]
    csv_rows = list(csv.reader(io.StringIO(body.read().decode())))
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE_NAME)))
        assert cur.fetchone()[0] == len(csv_rows) > 0

    # The success email went out (once), saying the run came from Airflow, and which run.
    [message] = wait_until(
        lambda: notifications(ready_stack, SUCCESS_SUBJECT, run_id), "the success email"
    )
    assert "Airflow" in message.message
    assert tags["airflow/run_id"] in message.message


def test_failed_dagster_run_fails_the_airflow_task(
    airflow_venv: Path, airflow_home: Path, deployment: DagsterDeployment, ready_stack
) -> None:
    wait_for_first_tick(deployment, "sns_on_pipeline_failure")
    boto3.client("s3").delete_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY)
    # No connection this time: the env fallback for the URL, the Variable for the rest.
    result = dags_test(
        airflow_venv,
        airflow_home,
        {
            "STOCK_ASSETS_DAGSTER_URL": deployment.url,
            "AIRFLOW_VAR_STOCK_ASSETS_DAGSTER": json.dumps(
                {"poll_seconds": 1, "job": "stock_pipeline_job", "location": "stock_assets"}
            ),
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-6000:]
    assert "state=failed" in output
    assert "from STOCK_ASSETS_DAGSTER_URL" in output
    run_id, url = launched(output)
    assert url == f"{deployment.url}/runs/{run_id}"
    assert run_status(deployment, run_id) == "FAILURE"
    # The task's error names the failing step and quotes its error, not the generic message.
    failure = re.search(rf"Dagster run {run_id} ended FAILURE: (.*)", output)
    assert failure, output[-6000:]
    assert "step historical_stock_data" in failure.group(1)
    assert "top_companies.txt" in failure.group(1)
    wait_until(lambda: notifications(ready_stack, FAILURE_SUBJECT, run_id), "the failure email")


def test_wrong_job_name_fails_without_a_run(
    airflow_venv: Path, airflow_home: Path, deployment: DagsterDeployment
) -> None:
    result = dags_test(
        airflow_venv,
        airflow_home,
        {
            "STOCK_ASSETS_DAGSTER_URL": deployment.url,
            "STOCK_ASSETS_DAGSTER_JOB": "no_such_job",
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "launchRun failed (PipelineNotFoundError)" in output, output[-6000:]
    assert not LAUNCHED.search(output)


# --------------------------------------------------------------------------------------------
# docker-compose.yaml's `airflow` service: `airflow standalone`, triggered over the REST API
# --------------------------------------------------------------------------------------------


def _api(
    base: str, path: str, token: str | None = None, body: Any = None, method: str | None = None
) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
        method=method or ("GET" if body is None else "POST"),
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.load(response)


def _try(call: Callable[[], T]) -> T | None:
    try:
        return call()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _compose_airflow_env(deployment: DagsterDeployment, api_port: int) -> dict[str, str]:
    """The service's environment, pointed at this machine instead of the compose network."""
    env = {key: str(value) for key, value in service("airflow")["environment"].items()}
    connection = env["AIRFLOW_CONN_DAGSTER_DEFAULT"].replace(
        "${STOCK_ASSETS_UI_URL:-http://127.0.0.1:3000}", deployment.url
    )
    conn = json.loads(connection)
    assert conn["host"] == "webserver" and conn["port"] == 3000  # the compose service
    conn.update(host="127.0.0.1", port=deployment.port)
    env.update(
        {
            "AIRFLOW_CONN_DAGSTER_DEFAULT": json.dumps(conn),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            # Task workers report to the API server; its default URL assumes port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # Fixed 8793/8794 on all interfaces by default: free ports here instead.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW_VAR_STOCK_ASSETS_DAGSTER": json.dumps({"poll_seconds": 1}),
        }
    )
    return env


def _stop_group(process: subprocess.Popen) -> None:
    """`airflow standalone` leaves its children behind on SIGTERM: stop its whole session."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@dataclass
class Standalone:
    """docker-compose.yaml's `airflow` service running here, and the REST calls the tests make."""

    base: str
    token: str
    home: Path
    log_path: Path

    def api(self, path: str, body: Any = None, method: str | None = None) -> Any:
        return _api(self.base, path, self.token, body, method)

    def trigger(self, run_id: str) -> None:
        self.api(
            f"/api/v2/dags/{DAG_ID}/dagRuns", body={"dag_run_id": run_id, "logical_date": None}
        )

    def dag_run_state(self, run_id: str) -> str:
        state = self.api(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        assert state != "failed", self.log_path.read_text(errors="replace")[-5000:]
        return state

    def finished(self, run_id: str) -> str | None:
        state = self.api(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    def task_instance(self, run_id: str) -> dict[str, Any]:
        return self.api(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}")

    def task_log(self, run_id: str, attempt: int | None = None) -> str:
        """The task's log files (`attempt=N.log`, one per try) as Airflow wrote them."""
        folder = self.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
        pattern = f"attempt={attempt}.log" if attempt else "attempt=*.log"
        return "".join(p.read_text(errors="replace") for p in sorted(folder.glob(pattern)))

    def set_paused(self, paused: bool) -> None:
        self.api(f"/api/v2/dags/{DAG_ID}", body={"is_paused": paused}, method="PATCH")


@pytest.fixture(scope="module")
def standalone(
    airflow_venv: Path, deployment: DagsterDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Standalone]:
    """`airflow standalone` as compose runs it, for the tests that trigger the DAG like a person
    or CI would (over the REST API) and clear or kill its task."""
    home = tmp_path_factory.mktemp("airflow_standalone")
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    env = airflow_env(airflow_venv, home, _compose_airflow_env(deployment, api_port))
    command = service("airflow")["command"]
    assert command == ["airflow", "standalone"]
    log_path = home / "standalone.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(airflow_venv / "bin" / command[0]), *command[1:]],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health = wait_until(
            lambda: _try(lambda: _api(base, "/api/v2/monitor/health")), "Airflow's API", 300
        )
        assert health["metadatabase"]["status"] == "healthy"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_until(passwords.exists, "the generated admin password")
        password = json.loads(passwords.read_text())["admin"]
        token = _api(base, "/auth/token", body={"username": "admin", "password": password})[
            "access_token"
        ]
        # The DAG shows up once the dag-processor has parsed the folder.
        wait_until(
            lambda: _try(lambda: _api(base, f"/api/v2/dags/{DAG_ID}", token)), "the DAG", 300
        )
        yield Standalone(base=base, token=token, home=home, log_path=log_path)
    finally:
        _stop_group(process)
        log.close()


@pytest.fixture
def daemon_back(deployment: DagsterDeployment) -> Iterator[None]:
    """Tests stop the Dagster daemon to keep a run QUEUED; it runs again after each."""
    yield
    if "daemon" not in deployment.processes:
        deployment.start_daemon()


def airflow_runs(deployment: DagsterDeployment, airflow_run_id: str) -> list[Any]:
    """The Dagster runs one Airflow run launched (or a test made for it), newest first."""
    identity = {
        "stock_assets/trigger": "airflow",
        "airflow/dag_id": DAG_ID,
        "airflow/run_id": airflow_run_id,
    }
    return deployment.instance().get_runs(RunsFilter(tags=identity))


def test_compose_airflow_service_adopts_a_run_instead_of_launching_twice(
    standalone: Standalone, deployment: DagsterDeployment, ready_stack, db, daemon_back
) -> None:
    """The Dagster run for this Airflow run already exists and is still going (as after a worker
    crash and retry, or a Clear while it runs): the task must wait for it rather than start a
    second pipeline run."""
    airflow_run_id = f"compose-test-{uuid.uuid4().hex[:8]}"
    identity = {
        "stock_assets/trigger": "airflow",
        "airflow/dag_id": DAG_ID,
        "airflow/run_id": airflow_run_id,
    }
    deployment.stop_daemon()  # the existing run stays QUEUED until the task has adopted it
    existing = deployment.launch_run(tags=identity)
    standalone.trigger(airflow_run_id)

    def adopted() -> bool:
        standalone.dag_run_state(airflow_run_id)  # fails the wait if the Airflow run failed
        return "from an earlier try is still going" in standalone.task_log(airflow_run_id)

    wait_until(adopted, "the task to find the existing Dagster run", 300)
    deployment.start_daemon()
    assert wait_until(lambda: standalone.finished(airflow_run_id), "the Airflow run", 400) == (
        "success"
    )
    assert [run.run_id for run in airflow_runs(deployment, airflow_run_id)] == [existing]
    assert run_status(deployment, existing) == "SUCCESS"
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE_NAME)))
        assert cur.fetchone()[0] > 0

    # One that failed is not taken (a Clear after the cause was fixed keeps the Airflow run
    # id): the task launches a new run, which succeeds now.
    cleared_run_id = f"compose-test-{uuid.uuid4().hex[:8]}"
    identity = {**identity, "airflow/run_id": cleared_run_id}
    s3 = boto3.client("s3")
    kept_filter = s3.get_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY)["Body"].read()
    s3.delete_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY)
    failed = deployment.launch_run(tags=identity)
    wait_until(lambda: run_status(deployment, failed) == "FAILURE", "the failed run", 300)
    s3.put_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY, Body=kept_filter)
    standalone.trigger(cleared_run_id)
    assert wait_until(
        lambda: standalone.finished(cleared_run_id), "the second Airflow run", 400
    ) == ("success")
    tagged = airflow_runs(deployment, cleared_run_id)
    assert [run.status.value for run in tagged] == ["SUCCESS", "FAILURE"]


def test_compose_airflow_service_clear_after_a_success_runs_the_pipeline_again(
    standalone: Standalone, deployment: DagsterDeployment, ready_stack
) -> None:
    """Clear on a task whose Dagster run succeeded means "run it again". The Airflow run id stays
    the same, so the task finds that success; it must launch a new Dagster run, not take it."""
    airflow_run_id = f"compose-test-{uuid.uuid4().hex[:8]}"
    standalone.trigger(airflow_run_id)
    assert wait_until(lambda: standalone.finished(airflow_run_id), "the Airflow run", 400) == (
        "success"
    )
    [first] = airflow_runs(deployment, airflow_run_id)
    assert first.status.value == "SUCCESS"

    # A real Clear, as the UI's Clear button sends it (also for a task that succeeded).
    standalone.api(
        f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
        body={
            "dry_run": False,
            "dag_run_id": airflow_run_id,
            "task_ids": [TASK_ID],
            "only_failed": False,
        },
    )

    def cleared_try_ended() -> dict[str, Any] | None:
        standalone.dag_run_state(airflow_run_id)
        ti = standalone.task_instance(airflow_run_id)
        return ti if ti["try_number"] == 2 and ti["state"] in ("success", "failed") else None

    ti = wait_until(cleared_try_ended, "the try after the Clear", 400)
    assert ti["state"] == "success"
    # What the DAG tells a Clear by: it raised max_tries to try_number + retries (1).
    assert ti["max_tries"] == 2
    assert wait_until(lambda: standalone.finished(airflow_run_id), "the Airflow run", 60) == (
        "success"
    )
    second_try = standalone.task_log(airflow_run_id, attempt=2)
    assert f"Dagster run {first.run_id} from an earlier try ended SUCCESS; launching" in second_try
    newest, earlier = airflow_runs(deployment, airflow_run_id)
    assert earlier.run_id == first.run_id
    assert newest.status.value == "SUCCESS"
    assert newest.tags["airflow/try_number"] == "2"
    assert f"Dagster run {newest.run_id} launched" in second_try


def test_compose_airflow_service_retry_takes_the_dagster_success(
    standalone: Standalone, deployment: DagsterDeployment, ready_stack, daemon_back
) -> None:
    """An automatic retry: the try that launched the Dagster run dies after the run reached
    Dagster (its process killed, as in a worker crash). The retry finds the run ended SUCCESS and
    takes its result instead of running the pipeline again."""
    airflow_run_id = f"compose-test-{uuid.uuid4().hex[:8]}"
    deployment.stop_daemon()  # the launched run stays QUEUED while the first try waits for it
    standalone.trigger(airflow_run_id)

    def first_try_launched() -> re.Match[str] | None:
        standalone.dag_run_state(airflow_run_id)
        return LAUNCHED.search(standalone.task_log(airflow_run_id, attempt=1))

    dagster_run_id = wait_until(first_try_launched, "the first try's launch", 300).group(1)
    ti = standalone.task_instance(airflow_run_id)
    assert (ti["state"], ti["try_number"], ti["max_tries"]) == ("running", 1, 1)
    # Paused, the scheduler starts no retry until the Dagster run has ended (retry_delay is
    # 1 min; the run could still be going then, and that is the other test's case).
    standalone.set_paused(True)
    try:
        os.kill(ti["pid"], signal.SIGKILL)  # the task process, not its supervisor
        wait_until(
            lambda: standalone.task_instance(airflow_run_id)["state"] == "up_for_retry",
            "the killed try to be up for retry",
            120,
        )
        deployment.start_daemon()
        wait_until(
            lambda: run_status(deployment, dagster_run_id) == "SUCCESS", "the Dagster run", 300
        )
    finally:
        standalone.set_paused(False)
    assert wait_until(lambda: standalone.finished(airflow_run_id), "the retry", 400) == "success"
    ti = standalone.task_instance(airflow_run_id)
    assert (ti["try_number"], ti["max_tries"]) == (2, 1)
    retry_log = standalone.task_log(airflow_run_id, attempt=2)
    assert f"Dagster run {dagster_run_id} from an earlier try already ended SUCCESS" in retry_log
    assert [run.run_id for run in airflow_runs(deployment, airflow_run_id)] == [dagster_run_id]
