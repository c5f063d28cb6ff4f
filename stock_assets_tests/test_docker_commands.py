"""docker-compose.yaml's container commands, run outside Docker with the same files.

One test stands the compose stack up the way the containers would, each process started from
the command line in docker/docker-compose.yaml (see compose.localise for the only changes):

  postgres init SQL → moto → provision (one shot) → user_code gRPC server → webserver + daemon

The webserver and daemon load docker/workspace.yaml (grpc_server) and get exactly the environment
compose gives them: the instance URL and the code server's address, nothing of AWS. The run is
launched over GraphQL and executes in the code server's process tree, as in the containers.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg2
import pytest
from psycopg2 import sql

from stock_assets.local.stack import LocalStack, MotoServer, free_port
from stock_assets.settings import OUTPUT_KEY, TABLE_NAME, Naming
from stock_assets_tests.compose import DOCKER_DIR, healthcheck, localise, service
from stock_assets_tests.conftest import SAMPLE_FILTER, SAMPLE_STOCKS
from stock_assets_tests.deployment import DagsterDeployment, dagster_storage_url

TARGET_DB = "stock_assets"  # created by docker/postgres/10-create-stock-assets-db.sql


def wait_for_command(command: list[str], env: dict[str, str], timeout: float = 120) -> None:
    """Run a healthcheck command until it exits 0, as Docker would."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{command} still failing: {result.stdout}{result.stderr}")
        time.sleep(1)


def run_init_sql(stack: LocalStack) -> str:
    """What the postgres image does with docker/postgres/*.sql on an empty volume."""
    conn = psycopg2.connect(stack.env["STOCK_ASSETS_DATABASE_URL"])
    conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TARGET_DB)))
        for script in sorted((DOCKER_DIR / "postgres").glob("*.sql")):
            cur.execute(script.read_text())
    conn.close()
    # Same server, the database the script made (socket connection, as the stack's URL).
    return dagster_storage_url(stack, TARGET_DB).replace("postgresql+psycopg2://", "postgresql://")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """What docker-compose mounts at /opt/dagster/data: the filter file and Stocks/ (samples)."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(SAMPLE_FILTER, folder / "top_companies.txt")
    shutil.copytree(SAMPLE_STOCKS, folder / "Stocks")
    return folder


@pytest.fixture
def moto_from_compose(tmp_path: Path) -> Iterator[MotoServer]:
    """The `moto` service's command (a server of its own, not the session's)."""
    moto = MotoServer()
    command = localise(service("moto")["command"], port=moto.port)
    log = open(tmp_path / "moto.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_command(healthcheck("moto", port=moto.port), dict(os.environ), timeout=30)
        moto.process = process
        yield moto
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_compose_services_run_the_pipeline_outside_docker(
    local_stack: LocalStack, moto_from_compose: MotoServer, data_dir: Path, tmp_path: Path
) -> None:
    target_url = run_init_sql(local_stack)
    app_env = {
        **os.environ,
        **local_stack.env,
        "AWS_ENDPOINT_URL": moto_from_compose.endpoint_url,
        "STOCK_ASSETS_DATABASE_URL": target_url,
    }

    # provision (one shot): buckets, topic, filter, Scripts/, Stocks/, the table.
    provision = subprocess.run(
        localise(service("provision")["command"]),
        env={
            **app_env,
            **service("provision")["environment"],
            "STOCK_ASSETS_DATA_DIR": str(data_dir),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert provision.returncode == 0, provision.stdout + provision.stderr

    grpc_port = free_port()
    deployment = DagsterDeployment(
        stack=local_stack,
        home=tmp_path / "compose_dagster_home",
        workspace=DOCKER_DIR / "workspace.yaml",
        env_overrides={
            "AWS_ENDPOINT_URL": moto_from_compose.endpoint_url,
            "STOCK_ASSETS_DATABASE_URL": target_url,
        },
    )
    # The webserver and daemon get only what compose gives them (+ PATH, HOME, DAGSTER_HOME,
    # which the image sets): `env -i` starts them with exactly that.
    instance_env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "DAGSTER_HOME": str(deployment.home),
        "DAGSTER_POSTGRES_URL": dagster_storage_url(local_stack, f"dagster_{deployment.home.name}"),
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(grpc_port),
    }
    assert set(instance_env) - {"PATH", "HOME", "DAGSTER_HOME"} == set(
        service("webserver")["environment"]
    )
    env_prefix = ["env", "-i", *(f"{k}={v}" for k, v in instance_env.items())]
    deployment.commands = {
        "webserver": env_prefix + localise(service("webserver")["command"], port=deployment.port),
        "daemon": env_prefix + localise(service("daemon")["command"]),
    }
    try:
        # user_code first, healthy before the others start (compose: condition service_healthy).
        deployment.spawn("user_code", localise(service("user_code")["command"], port=grpc_port))
        wait_for_command(healthcheck("user_code", port=grpc_port), deployment._env)
        deployment.start()
        wait_for_command(healthcheck("webserver", port=deployment.port), deployment._env)

        # The location is served by the gRPC server, not loaded by the webserver itself.
        entries = deployment.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
        [entry] = entries
        assert entry["name"] == "stock_assets"
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        metadata = {m["key"]: m["value"] for m in entry["displayMetadata"]}
        assert metadata.get("port") == str(grpc_port), metadata

        run_id = deployment.launch_run(tags={"stock_assets/trigger": "compose-test"})
        status = deployment.wait_for_run(run_id, timeout=300)
        assert status == "SUCCESS", deployment.log("user_code")[-4000:]
    finally:
        deployment.stop()

    # The CSV the run wrote to (compose's) S3 and the table in the init script's database agree.
    s3 = boto3.client("s3", endpoint_url=moto_from_compose.endpoint_url)
    body = s3.get_object(Bucket=Naming().source_bucket, Key=OUTPUT_KEY)["Body"].read().decode()
    csv_rows = list(csv.reader(io.StringIO(body)))
    assert csv_rows
    conn = psycopg2.connect(target_url)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE_NAME)))
        assert cur.fetchone()[0] == len(csv_rows)
    conn.close()


WORKSPACE = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        displayMetadata { key value }
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""
