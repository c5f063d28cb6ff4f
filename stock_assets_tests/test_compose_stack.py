"""The docker/ compose stack, built and run for real: CI's container stage (.ci/containers.sh).

Runs only there (marker `containers`, STOCK_ASSETS_CONTAINER_STAGE=1): the stage builds the images
and writes docker/.env; this module brings the `local` profile up with docker-compose v2 and
checks everything from outside the containers, through the published ports only: boto3 against
moto, psycopg2 against PostgreSQL, HTTP/GraphQL against the webserver, moto's data.json for the
SNS messages, Airflow's REST API. The tests run in file order and share one stack:

  images hold no secret and run unprivileged → the stack is healthy and serves the UI →
  a marker's run loads the real data (2,054,899 rows) and sends one success email →
  a failing run (filter removed) sends one failure email and leaves the table →
  the daemon stopped between a marker and its run: exactly one run →
  PostgreSQL killed during the load: failure email, table as before, the next run succeeds →
  the `airflow` profile triggers the shim DAG, whose Dagster run succeeds →
  docker-compose.run-containers.yaml (DockerRunLauncher): a marker's run executes in its own
  container of the project's image, loads the table and sends the success email → `down -v`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import psycopg2
import pytest

from stock_assets.local.sns_inbox import SentMessage, sent_messages
from stock_assets.notifications import MARKER_KEYS_TAG
from stock_assets.settings import FILTER_KEY
from stock_assets_tests.compose import COMPOSE_FILE, DOCKER_DIR, REPO_ROOT, read_env_file
from stock_assets_tests.deployment import graphql

pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(
        os.environ.get("STOCK_ASSETS_CONTAINER_STAGE") != "1",
        reason="the compose stack runs in CI's container stage only (bash .ci/containers.sh)",
    ),
]

T = TypeVar("T")
ROWS = 2_054_899  # the real data's output rows (1,000 filter entries, 995 non-empty files)
SUCCESS_SUBJECT = "Dora_Explorer_Pipeline_Success"
FAILURE_SUBJECT = "Dora_Explorer_Pipeline_Failure"
SOURCE_BUCKET = "de-mbd-predict-dora-explorer-s3-source"
MONITORED_BUCKET = "de-mbd-predict-dora-explorer-monitored-bucket"
PROJECT = "stock-assets"
RUN_CONTAINERS_FILE = DOCKER_DIR / "docker-compose.run-containers.yaml"
RUN_CONTAINER_LABEL = "stock-assets/run-container"
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[compose-stack +{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 300) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (urllib.error.URLError, OSError, ValueError, psycopg2.Error):
            value = None
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Stack:
    """docker-compose against docker/, and the published ports from docker/.env."""

    def __init__(self) -> None:
        self.env = read_env_file(DOCKER_DIR / ".env")
        compose = os.environ.get("STOCK_ASSETS_COMPOSE", "docker-compose")
        self.cli = [compose] if os.sep in compose else compose.split()
        self.engine = shutil.which("podman") or "docker"
        self.ui = f"http://127.0.0.1:{self.env['DAGSTER_WEBSERVER_PORT']}"
        self.moto = f"http://127.0.0.1:{self.env['MOTO_PORT']}"
        self.airflow = f"http://127.0.0.1:{self.env['AIRFLOW_PORT']}"
        password = self.env["POSTGRES_PASSWORD"]
        self.db_url = (
            f"postgresql://postgres:{password}@127.0.0.1:{self.env['POSTGRES_PORT']}/stock_assets"
        )
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.moto,
            region_name="eu-west-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - moto's dummy credentials
        )

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = [*self.cli, "-f", str(COMPOSE_FILE), *args]
        result = subprocess.run(
            command, cwd=DOCKER_DIR, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{command} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result.stdout

    def containers(self) -> list[str]:
        out = subprocess.run(
            [self.engine, "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return out.split()

    # --- Dagster, over the webserver's GraphQL -------------------------------------------
    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.ui, query, variables)

    def runs(self) -> list[dict[str, Any]]:
        query = """{ runsOrError(limit: 100) { ... on Runs { results {
            runId status jobName tags { key value } } } } }"""
        runs = self.graphql(query)["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
        return runs

    def runs_for_marker(self, key: str) -> list[dict[str, Any]]:
        return [
            run for run in self.runs() if key in json.loads(run["tags"].get(MARKER_KEYS_TAG, "[]"))
        ]

    def wait_for_run(self, find: Callable[[], list[dict[str, Any]]], what: str) -> dict:
        """The one run `find` returns, once it has finished."""
        runs = wait_until(find, f"a run for {what}", 120)
        assert len(runs) == 1, f"{len(runs)} runs for {what}"
        run_id = runs[0]["runId"]
        log(f"run {run_id} started for {what}")

        def finished() -> dict[str, Any] | None:
            [run] = [r for r in self.runs() if r["runId"] == run_id]
            return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

        run = wait_until(finished, f"run {run_id} to finish", 600)
        log(f"run {run_id} ended {run['status']}")
        return run

    def idle(self) -> bool:
        return not [r for r in self.runs() if r["status"] in ("QUEUED", "STARTING", "STARTED")]

    # --- S3, SNS, the table ----------------------------------------------------------------
    def drop_marker(self, name: str) -> str:
        key = f"ci/{name}-{uuid.uuid4().hex[:8]}/.SUCCESS"
        self.s3.put_object(Bucket=MONITORED_BUCKET, Key=key, Body=b"")
        log(f"marker s3://{MONITORED_BUCKET}/{key} dropped")
        return key

    def emails(self, run_id: str | None = None) -> list[SentMessage]:
        messages = sent_messages(self.moto, attempts=10, delay=0.5)
        return [m for m in messages if run_id is None or run_id in m.message]

    def wait_for_email(self, run_id: str, subject: str) -> list[SentMessage]:
        # A duplicate would come ticks later: test_every_run_got_exactly_one_email looks for
        # them once every run is minutes old.
        messages = wait_until(lambda: self.emails(run_id), f"the email for run {run_id}", 180)
        log(f"emails for run {run_id}: {[m.subject for m in messages]}")
        assert [m.subject for m in messages] == [subject]
        return messages

    def table_rows(self) -> int:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM historical_stocks_data")
            count = cur.fetchone()[0]
        conn.close()
        return count

    def copy_in_progress(self) -> bool:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query ILIKE 'COPY%historical_stocks_data%'"
            )
            active = cur.fetchone()[0] > 0
        conn.close()
        return active


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack()
    stack.compose("--profile", "local", "--profile", "airflow", "down", "-v", "--remove-orphans")
    started = time.monotonic()
    stack.compose("--profile", "local", "up", "-d", "--no-build", "--wait", timeout=900)
    log(f"profile local up and healthy in {time.monotonic() - started:.0f}s")
    # moto 5.2: freeze the Glacier-restore simulation before the first multipart upload, or
    # data.json answers 500 (FIELD-NOTES; the offline stack does the same).
    request = urllib.request.Request(
        f"{stack.moto}/moto-api/state-manager/set-transition",
        data=json.dumps(
            {
                "model_name": "s3::keyrestore",
                "transition": {"progression": "manual", "times": 1_000_000_000},
            }
        ).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()
    try:
        yield stack
    finally:
        if os.environ.get("STOCK_ASSETS_KEEP_STACK") != "1":
            _remove_run_containers(stack)
            stack.compose(
                "--profile", "local", "--profile", "airflow", "down", "-v", "--remove-orphans",
                check=False,
            )  # fmt: skip


# ------------------------------------------------------------------------------------------
# The images
# ------------------------------------------------------------------------------------------

SECRET_NAMES = re.compile(
    r"(^|/)(\.env|\.env\.[^/]*|id_rsa|id_ed25519|\.aws/credentials|\.netrc|\.pgpass)$"
)
SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|DATABASE_URL|POSTGRES_URL")
AWS_KEY_ID = re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b")


def _image_names(stack: Stack) -> list[str]:
    return [
        stack.env["STOCK_ASSETS_IMAGE"],
        stack.env["STOCK_ASSETS_EMULATOR_IMAGE"],
        stack.env["STOCK_ASSETS_AIRFLOW_IMAGE"],
    ]


# Layers already scanned (by their name in the archive, a content digest): the images share
# many, each is read once. Value: (files, files scanned).
_SCANNED_LAYERS: dict[str, tuple[int, int]] = {}


def _scan_layer(
    stack: Stack, image: str, outer: tarfile.TarFile, member: tarfile.TarInfo
) -> tuple[int, int]:
    if member.name in _SCANNED_LAYERS:
        return _SCANNED_LAYERS[member.name]
    password = stack.env["POSTGRES_PASSWORD"].encode()
    layer = outer.extractfile(member)
    assert layer is not None
    scanned = files = 0
    with tarfile.open(fileobj=io.BytesIO(layer.read())) as tar:
        for item in tar:
            files += 1
            assert not SECRET_NAMES.search(item.name), f"{image}: {item.name}"
            if not item.isfile() or item.size > 2_000_000:
                continue
            if not re.match(r"(\./)?(opt|etc|root|home|tmp)/", item.name):
                continue
            data = tar.extractfile(item).read()  # type: ignore[union-attr]
            scanned += 1
            assert password not in data, f"{image}: {item.name}"
            assert not AWS_KEY_ID.search(data), f"{image}: {item.name}"
    _SCANNED_LAYERS[member.name] = (files, scanned)
    return files, scanned


@pytest.mark.parametrize("which", [0, 1, 2], ids=["app", "emulator", "airflow"])
def test_images_hold_no_secrets_and_run_unprivileged(which: int, tmp_path) -> None:
    stack = Stack()
    image = _image_names(stack)[which]
    [info] = json.loads(
        subprocess.run(
            [stack.engine, "image", "inspect", image], capture_output=True, check=True
        ).stdout
    )
    user = info["Config"].get("User", "")
    assert user and user.split(":")[0] not in ("root", "0"), f"{image} runs as {user!r}"
    for entry in info["Config"].get("Env", []):
        key, _, value = entry.partition("=")
        assert not SECRET_ENV.search(key), f"{image} bakes in {key}"
        assert stack.env["POSTGRES_PASSWORD"] not in value
    # Every layer's files: no env/credential files anywhere; the project's own folders (and
    # /etc, /root, /home) free of the generated password and of AWS key ids.
    archive = tmp_path / "image.tar"
    subprocess.run(
        [stack.engine, "save", "--format", "docker-archive", "-o", str(archive), image],
        check=True,
        capture_output=True,
    )
    scanned = files = 0
    with tarfile.open(archive) as outer:
        for member in outer:
            if member.name.endswith(".tar"):
                layer_files, layer_scanned = _scan_layer(stack, image, outer, member)
                files += layer_files
                scanned += layer_scanned
    log(f"{image}: user {user}, {files} files in its layers, {scanned} scanned: no secrets")
    assert files > 1000 and scanned > 10


# ------------------------------------------------------------------------------------------
# The local profile, end to end
# ------------------------------------------------------------------------------------------


def test_the_stack_is_healthy_and_serves_the_ui(stack: Stack) -> None:
    out = stack.compose("ps", "-a", "--format", "json").strip()
    # Compose v2 prints one JSON object per line (older releases: one JSON list).
    status = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines()]
    states = {s["Service"]: (s["State"], s.get("Health", ""), s.get("ExitCode")) for s in status}
    log(f"services: {states}")
    for name in ("postgres", "moto", "user_code", "webserver"):
        assert states[name][:2] == ("running", "healthy"), (name, states[name])
    assert states["daemon"][0] == "running"
    assert states["provision"][0] == "exited" and states["provision"][2] == 0
    # The webserver the package installs plainly answers, with the code location loaded.
    with urllib.request.urlopen(f"{stack.ui}/server_info", timeout=10) as response:
        info = json.load(response)
    log(f"webserver: {info}")
    with urllib.request.urlopen(stack.ui, timeout=10) as response:
        assert b"Dagster" in response.read()
    query = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        name location { name } jobs { name } sensors { name sensorState { status } } } } } }"""
    [repo] = stack.graphql(query)["repositoriesOrError"]["nodes"]
    assert repo["location"]["name"] == "stock_assets"
    assert "stock_pipeline_job" in {job["name"] for job in repo["jobs"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    assert sensors["success_marker_sensor"] == "RUNNING"
    # Every Dagster process runs as the image's unprivileged user.
    for name in ("user_code", "webserver", "daemon"):
        uid = stack.compose("exec", "-T", name, "id", "-u").strip()
        assert uid not in ("", "0"), name


def test_a_marker_runs_the_pipeline_on_the_real_data_and_emails_success(stack: Stack) -> None:
    assert stack.emails() == []
    key = stack.drop_marker("first")
    run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
    assert run["status"] == "SUCCESS"
    assert run["jobName"] == "stock_pipeline_job"
    rows = stack.table_rows()
    log(f"historical_stocks_data holds {rows:,} rows")
    assert rows == ROWS
    stack.wait_for_email(run["runId"], SUCCESS_SUBJECT)
    assert [m.subject for m in stack.emails()] == [SUCCESS_SUBJECT]


def test_a_failing_run_emails_failure_and_leaves_the_table(stack: Stack) -> None:
    original = stack.s3.get_object(Bucket=SOURCE_BUCKET, Key=FILTER_KEY)["Body"].read()
    stack.s3.delete_object(Bucket=SOURCE_BUCKET, Key=FILTER_KEY)
    log(f"filter s3://{SOURCE_BUCKET}/{FILTER_KEY} removed")
    try:
        key = stack.drop_marker("no-filter")
        run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
        assert run["status"] == "FAILURE"
        stack.wait_for_email(run["runId"], FAILURE_SUBJECT)
    finally:
        stack.s3.put_object(Bucket=SOURCE_BUCKET, Key=FILTER_KEY, Body=original)
    assert stack.table_rows() == ROWS


# ------------------------------------------------------------------------------------------
# Faults in the containers
# ------------------------------------------------------------------------------------------


def test_daemon_stopped_between_a_marker_and_its_run_gives_exactly_one_run(stack: Stack) -> None:
    stack.compose("stop", "daemon")
    log("daemon stopped")
    key = stack.drop_marker("daemon-down")
    time.sleep(10)  # two sensor intervals: nothing may start while the daemon is down
    assert stack.runs_for_marker(key) == []
    stack.compose("start", "daemon")
    log("daemon started again")
    run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
    assert run["status"] == "SUCCESS"
    time.sleep(10)  # two more ticks after the restart: still one run for the marker
    assert len(stack.runs_for_marker(key)) == 1
    stack.wait_for_email(run["runId"], SUCCESS_SUBJECT)
    assert stack.table_rows() == ROWS


def test_postgres_killed_during_the_load(stack: Stack) -> None:
    key = stack.drop_marker("postgres-killed")
    wait_until(stack.copy_in_progress, "the COPY into historical_stocks_data", 240)
    stack.compose("kill", "postgres")
    log("postgres killed during the COPY")
    time.sleep(2)
    stack.compose("start", "postgres")
    wait_until(lambda: stack.table_rows() >= 0, "PostgreSQL back", 120)
    log("postgres started again")
    run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
    assert run["status"] == "FAILURE"
    stack.wait_for_email(run["runId"], FAILURE_SUBJECT)
    rows = stack.table_rows()
    log(f"after the restart the table holds {rows:,} rows (as before)")
    assert rows == ROWS
    # The next marker's run succeeds.
    key = stack.drop_marker("after-postgres")
    run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
    assert run["status"] == "SUCCESS"
    stack.wait_for_email(run["runId"], SUCCESS_SUBJECT)
    assert stack.table_rows() == ROWS


# ------------------------------------------------------------------------------------------
# The airflow profile
# ------------------------------------------------------------------------------------------


def _api(base: str, path: str, token: str | None = None, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_the_airflow_dag_triggers_a_dagster_run_that_succeeds(stack: Stack) -> None:
    started = time.monotonic()
    # --no-deps: the services Airflow needs are running; without it compose under podman
    # recreates them, killing a run in progress (the Parquet copy's, which follows each CSV).
    stack.compose(
        "--profile", "local", "--profile", "airflow", "up", "-d", "--no-build", "--no-deps",
        "airflow", timeout=600,
    )  # fmt: skip
    base = stack.airflow
    health = wait_until(lambda: _api(base, "/api/v2/monitor/health"), "Airflow's API", 400)
    assert health["metadatabase"]["status"] == "healthy"
    log(f"airflow up in {time.monotonic() - started:.0f}s")
    passwords = wait_until(
        lambda: stack.compose(
            "exec", "-T", "airflow", "cat",
            "/opt/airflow/home/simple_auth_manager_passwords.json.generated", check=False,
        ).strip(),
        "the generated admin password", 120,
    )  # fmt: skip
    password = json.loads(passwords)["admin"]
    token = _api(base, "/auth/token", body={"username": "admin", "password": password})[
        "access_token"
    ]
    wait_until(lambda: _api(base, "/api/v2/dags/stock_pipeline", token), "the DAG", 300)
    airflow_run_id = f"ci-{uuid.uuid4().hex[:8]}"
    _api(
        base,
        "/api/v2/dags/stock_pipeline/dagRuns",
        token,
        body={"dag_run_id": airflow_run_id, "logical_date": None},
    )
    log(f"DAG stock_pipeline triggered: Airflow run {airflow_run_id}")

    def dagster_runs() -> list[dict[str, Any]]:
        return [r for r in stack.runs() if r["tags"].get("airflow/run_id") == airflow_run_id]

    run = stack.wait_for_run(dagster_runs, f"Airflow run {airflow_run_id}")
    assert run["status"] == "SUCCESS"
    assert run["tags"]["stock_assets/trigger"] == "airflow"

    def airflow_state() -> str | None:
        state = _api(base, f"/api/v2/dags/stock_pipeline/dagRuns/{airflow_run_id}", token)["state"]
        return state if state in ("success", "failed") else None

    state = wait_until(airflow_state, "the Airflow run to finish", 300)
    log(f"Airflow run {airflow_run_id}: {state}; Dagster run {run['runId']}: {run['status']}")
    assert state == "success"
    stack.wait_for_email(run["runId"], SUCCESS_SUBJECT)
    assert stack.table_rows() == ROWS


# ------------------------------------------------------------------------------------------
# Each run in its own container (DockerRunLauncher through podman's Docker API)
# ------------------------------------------------------------------------------------------


def _inspect(stack: Stack, container_id: str) -> dict[str, Any]:
    [info] = json.loads(
        subprocess.run(
            [stack.engine, "container", "inspect", container_id],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    return info


def _run_containers(stack: Stack, status: str | None = None) -> list[str]:
    only = ["--filter", f"status={status}"] if status else []
    return subprocess.run(
        [stack.engine, "ps", "-a", "-q", "--no-trunc", "--filter", f"label={RUN_CONTAINER_LABEL}",
         *only],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def _remove_run_containers(stack: Stack) -> None:
    """The launcher keeps run containers (not compose's): remove them, so `down -v` can remove
    the volume they mount."""

    def removed() -> bool:
        for container_id in _run_containers(stack):
            result = subprocess.run(
                [stack.engine, "rm", "-f", container_id], capture_output=True, text=True
            )
            log(
                f"{stack.engine} rm -f {container_id[:12]}: exit {result.returncode} {result.stderr}"
            )
        return _run_containers(stack) == []

    wait_until(removed, "the run containers removed", 60)


def test_with_the_run_containers_override_each_run_gets_its_own_container(stack: Stack) -> None:
    # Recreating user_code kills the runs it hosts (docs/deployment.md, "Operations"): as an
    # operator would, wait until none is going (the Parquet copy's may be).
    wait_until(stack.idle, "no run in progress", 180)
    started = time.monotonic()
    stack.compose(
        "-f", str(RUN_CONTAINERS_FILE), "--profile", "local",
        "up", "-d", "--no-build", "--no-deps", "--wait", "user_code", "webserver", "daemon",
        timeout=600,
    )  # fmt: skip
    log(
        f"user_code, webserver, daemon recreated (DockerRunLauncher) in {time.monotonic() - started:.0f}s"
    )
    # The daemon now has the socket and the launcher's instance; compose's own containers only.
    for name in ("webserver", "daemon"):
        launcher = stack.compose(
            "exec", "-T", name, "python", "-c",
            "from dagster import DagsterInstance;"
            "print(type(DagsterInstance.get().run_launcher).__name__)",
        ).strip()  # fmt: skip
        assert launcher == "DockerRunLauncher", (name, launcher)
    # (A run container may already be there: the Parquet copy's automation can launch a run as
    # soon as the daemon is back. Only this run's own container is checked below.)
    before = set(stack.containers())

    key = stack.drop_marker("own-container")
    run = stack.wait_for_run(lambda: stack.runs_for_marker(key), key)
    assert run["status"] == "SUCCESS"
    run_id = run["runId"]
    # The launcher's record of the container, and the container itself, as the engine has it.
    container_id = run["tags"]["docker/container_id"]
    image = stack.env["STOCK_ASSETS_IMAGE"]
    assert run["tags"]["dagster/image"] == image
    # The run is recorded SUCCESS just before its process (the container's) ends.
    info = wait_until(
        lambda: (i := _inspect(stack, container_id))["State"]["Status"] == "exited" and i,
        f"container {container_id[:12]} to exit",
        60,
    )
    labels = info["Config"]["Labels"]
    log(
        f"run {run_id} ran in container {container_id[:12]} ({info['Name']}), image "
        f"{info['ImageName']}, exit {info['State']['ExitCode']}, networks "
        f"{sorted(info['NetworkSettings']['Networks'])}"
    )
    assert labels["dagster/run_id"] == run_id
    assert labels[RUN_CONTAINER_LABEL] == "true"
    assert "com.docker.compose.service" not in labels  # not one of the stack's services
    assert info["ImageName"] == image
    assert info["State"]["ExitCode"] == 0
    assert "execute_run" in info["Config"]["Cmd"]
    assert f"{PROJECT}_default" in info["NetworkSettings"]["Networks"]
    # A fresh container for this run alone (any other is another run's: the Parquet copy's
    # automation run follows a new CSV), and no compose service was restarted for it.
    mine = [
        c
        for c in _run_containers(stack)
        if _inspect(stack, c)["Config"]["Labels"]["dagster/run_id"] == run_id
    ]
    assert mine == [container_id]
    assert set(stack.containers()) == before
    # The run's output, as a user sees it: the table, the email.
    assert stack.table_rows() == ROWS
    stack.wait_for_email(run_id, SUCCESS_SUBJECT)

    # Every run launched meanwhile ran in a container of its own too; let them end, then remove.
    wait_until(stack.idle, "no run in progress", 180)
    containers = _run_containers(stack)
    runs = {_inspect(stack, c)["Config"]["Labels"]["dagster/run_id"] for c in containers}
    log(f"{len(containers)} run container(s) since the override, for {len(runs)} run(s)")
    assert len(runs) == len(containers)
    assert run_id in runs
    _remove_run_containers(stack)


def test_every_run_got_exactly_one_email(stack: Stack) -> None:
    """Over the whole stage (the daemon restarted, PostgreSQL killed, services recreated): one
    email for each of the pipeline's runs, none twice, none for anything else."""
    time.sleep(10)  # two sensor ticks after the last run's email: a duplicate would show
    runs = [r for r in stack.runs() if r["jobName"] == "stock_pipeline_job"]
    assert all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs), runs
    emails = stack.emails()
    per_run = {r["runId"]: [m.subject for m in emails if r["runId"] in m.message] for r in runs}
    log(f"{len(emails)} emails for {len(runs)} pipeline runs")
    expected = {
        r["runId"]: [SUCCESS_SUBJECT if r["status"] == "SUCCESS" else FAILURE_SUBJECT] for r in runs
    }
    assert per_run == expected
    assert runs and len(emails) == len(runs)


def test_down_removes_every_container_and_volume(stack: Stack) -> None:
    # As an operator tears the stack down (docs/deployment.md): the daemon first, so nothing
    # launches any more (the Parquet copy's automation may start a run, in a container of its
    # own, after the last test's cleanup), then the run containers still going end, they are
    # removed, and `down -v` leaves nothing.
    stack.compose("stop", "daemon")
    wait_until(lambda: _run_containers(stack, "running") == [], "no run container running", 180)
    _remove_run_containers(stack)
    stack.compose("--profile", "local", "--profile", "airflow", "down", "-v", "--remove-orphans")
    assert stack.containers() == []
    volumes = subprocess.run(
        [stack.engine, "volume", "ls", "--filter", f"label=com.docker.compose.project={PROJECT}",
         "--format", "{{.Name}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert volumes == []
    log("docker compose down -v: no container or volume left")
    assert REPO_ROOT.is_dir()
