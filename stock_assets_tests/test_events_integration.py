"""Issue 4's "done when", on a real deployment: webserver + daemon, PostgreSQL-backed instance,
moto S3/SNS, embedded PostgreSQL.

A `.SUCCESS` upload starts a run, the table is loaded and SNS gets exactly one success message; a
failing run (filter file removed) sends exactly one failure message with the step's error; a
second marker gets its own run; no marker is ever run twice, across a daemon restart too.

One deployment serves the whole module (starting one costs tens of seconds); the tests run in file
order and each waits for what it needs rather than sleeping fixed times.
"""

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import psycopg2
import pytest
from dagster import RunsFilter
from psycopg2 import sql

from stock_assets.local.seed import seed_source_bucket
from stock_assets.local.sns_inbox import SentMessage, sent_messages
from stock_assets.local.stack import LocalStack, free_port
from stock_assets.notifications import MARKER_KEYS_TAG, NOTIFICATION_TAG
from stock_assets.provision import drop_marker
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, TABLE_NAME, Naming
from stock_assets_tests.conftest import SAMPLE_FILTER, TESTS_DATA, sample_files, table_rows
from stock_assets_tests.deployment import DagsterDeployment

T = TypeVar("T")
INTERVAL_SECONDS = 5  # the daemon's own loop runs every 5 s, so shorter would not help
SENSORS = ("success_marker_sensor", "sns_on_pipeline_success", "sns_on_pipeline_failure")
NAMING = Naming()
SUCCESS_SUBJECT = "Dora_Explorer_Pipeline_Success"
FAILURE_SUBJECT = "Dora_Explorer_Pipeline_Failure"

TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 10) { status timestamp error { message } } } }
  }
}
"""


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 240) -> T:
    """Poll until `predicate()` is truthy; the machine may be busy, so timeouts are generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ticks(deployment: DagsterDeployment, sensor: str) -> list[dict[str, Any]]:
    selector = {
        "repositoryLocationName": "stock_assets",
        "repositoryName": "__repository__",
        "sensorName": sensor,
    }
    result = deployment.graphql(TICKS, {"selector": selector})["sensorOrError"]
    assert result["__typename"] == "Sensor", result
    return result["sensorState"]["ticks"]


def wait_for_ticks(deployment: DagsterDeployment, sensor: str, after: float, count: int = 1):
    """Wait until `sensor` has completed `count` ticks that started after `after` (epoch s)."""
    wait_until(
        lambda: sum(
            1 for t in ticks(deployment, sensor)
            if t["timestamp"] > after and t["status"] != "STARTED"
        ) >= count,
        f"{count} tick(s) of {sensor}",
    )  # fmt: skip


def instance(deployment: DagsterDeployment):
    """One DagsterInstance on the deployment's storage, reused by every poll."""
    if not hasattr(deployment, "_test_instance"):
        deployment._test_instance = deployment.instance()
    return deployment._test_instance


def marker_runs(deployment: DagsterDeployment, key: str) -> list:
    runs = instance(deployment).get_runs(
        filters=RunsFilter(tags={"dagster/sensor_name": "success_marker_sensor"})
    )
    return [r for r in runs if key in json.loads(r.tags.get(MARKER_KEYS_TAG, "[]"))]


def messages(stack: LocalStack) -> list[SentMessage]:
    return sent_messages(stack.moto.endpoint_url, NAMING.sns_topic)


def wait_for_notification(deployment: DagsterDeployment, run_id: str, sensor: str) -> None:
    """The run is tagged once its message is out; then let the sensor tick once more, so a
    duplicate (were there one) would be in moto before the test counts."""
    wait_until(
        lambda: instance(deployment).get_run_by_id(run_id).tags.get(NOTIFICATION_TAG),
        f"the notification of run {run_id}",
    )
    wait_for_ticks(deployment, sensor, after=time.time())


def trigger_and_wait(deployment: DagsterDeployment, key: str) -> tuple[str, str, float]:
    """Drop a marker; wait for its run to finish. Returns (run id, status, seconds to launch)."""
    dropped = time.time()
    drop_marker(boto3.client("s3"), NAMING.monitored_bucket, key)
    [run] = wait_until(lambda: marker_runs(deployment, key), f"a run for {key}")
    record = instance(deployment).get_run_record_by_id(run.run_id)
    status = deployment.wait_for_run(run.run_id, timeout=300)
    return run.run_id, status, record.create_timestamp.timestamp() - dropped


@pytest.fixture(scope="module")
def deployment(local_stack: LocalStack, tmp_path_factory) -> Iterator[DagsterDeployment]:
    # Module scope: the per-test fixtures (clean_stack, seeded_stack) cannot be used here, so this
    # does the same reset and seeding once.
    local_stack.moto.reset()
    conn = psycopg2.connect(local_stack.env["STOCK_ASSETS_DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(TABLE_NAME)))
    conn.close()
    seed_source_bucket(
        boto3.client("s3"), NAMING, data_dir=TESTS_DATA,
        filter_bytes=SAMPLE_FILTER.read_bytes(), files=iter(sample_files()),
    )  # fmt: skip
    boto3.client("sns").create_topic(Name=NAMING.sns_topic)

    port = free_port()
    deployment = DagsterDeployment(
        local_stack,
        home=tmp_path_factory.mktemp("events"),
        port=port,
        env_overrides={
            "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS": str(INTERVAL_SECONDS),
            "STOCK_ASSETS_UI_URL": f"http://127.0.0.1:{port}",
        },
    )
    try:
        deployment.start()
        # A run-status sensor's first tick only records where the event log is: runs that end
        # before it would never be notified. Wait for every sensor's first tick.
        for sensor in SENSORS:
            wait_for_ticks(deployment, sensor, after=0)
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def first_run(deployment: DagsterDeployment) -> dict[str, Any]:
    run_id, status, launch_seconds = trigger_and_wait(deployment, "incoming/2026-11-01/.SUCCESS")
    print(f"marker → run launched in {launch_seconds:.1f}s (sensor interval {INTERVAL_SECONDS}s)")
    return {"run_id": run_id, "status": status, "key": "incoming/2026-11-01/.SUCCESS"}


def test_marker_runs_the_pipeline_and_sends_one_success_email(
    deployment, first_run, local_stack, s3_client, db
):
    assert first_run["status"] == "SUCCESS", deployment.log("daemon")[-3000:]
    # The table holds what the run wrote.
    head = s3_client.head_object(Bucket=NAMING.source_bucket, Key=OUTPUT_KEY)
    assert len(table_rows(db)) == int(head["Metadata"]["row-count"]) > 0

    wait_for_notification(deployment, first_run["run_id"], "sns_on_pipeline_success")
    [message] = messages(local_stack)
    assert message.subject == SUCCESS_SUBJECT
    assert f"Run id:     {first_run['run_id']}" in message.message
    assert f"{deployment.url}/runs/{first_run['run_id']}" in message.message
    assert f"/{first_run['key']} (sensor success_marker_sensor)" in message.message


def test_failing_run_from_a_second_marker_sends_one_failure_email(
    deployment, first_run, local_stack, s3_client, db
):
    filter_body = s3_client.get_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY)["Body"].read()
    before = sorted(table_rows(db))
    already = len(messages(local_stack))
    s3_client.delete_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY)
    try:
        run_id, status, _ = trigger_and_wait(deployment, "incoming/2026-11-02/.SUCCESS")
    finally:
        s3_client.put_object(Bucket=NAMING.source_bucket, Key=FILTER_KEY, Body=filter_body)

    assert run_id != first_run["run_id"]  # the second marker got its own run
    assert status == "FAILURE"
    assert sorted(table_rows(db)) == before  # a failed run leaves the table as it was
    wait_for_notification(deployment, run_id, "sns_on_pipeline_failure")
    new = messages(local_stack)[already:]
    assert [m.subject for m in new] == [FAILURE_SUBJECT]
    assert f"Run id:     {run_id}" in new[0].message
    assert "step top_companies: Failure: filter file" in new[0].message
    assert "CompanyNames/top_companies.txt does not exist" in new[0].message


def test_no_marker_is_run_twice_across_a_daemon_restart(deployment, first_run, s3_client):
    listing = s3_client.list_objects_v2(Bucket=NAMING.monitored_bucket)
    markers = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".SUCCESS")]
    assert first_run["key"] in markers
    before = {key: len(marker_runs(deployment, key)) for key in markers}
    assert set(before.values()) == {1}

    deployment.stop_daemon()
    restarted = time.time()
    deployment.start_daemon()
    # Two full ticks after the restart: the first could still be deciding.
    wait_for_ticks(deployment, "success_marker_sensor", after=restarted, count=2)
    assert {key: len(marker_runs(deployment, key)) for key in markers} == before
