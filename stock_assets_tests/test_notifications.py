"""Notifications: message building (pure), the SNS resource on moto, and the run-status sensors
invoked on real in-process runs of the pipeline."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, build_run_status_sensor_context

from stock_assets.definitions import defs
from stock_assets.local.sns_inbox import sent_messages
from stock_assets.local.stack import free_port
from stock_assets.notifications import (
    MARKER_BUCKET_TAG,
    MARKER_KEYS_TAG,
    NOTIFICATION_ID_TAG,
    NOTIFICATION_TAG,
    TRIGGER_TAG,
    NotificationError,
    ReportedCheck,
    RunNumbers,
    RunReport,
    StepError,
    build_body,
    describe_trigger,
    sanitise_subject,
)
from stock_assets.resources import PipelineSettings, SNSResource
from stock_assets.sensors import sns_on_pipeline_failure, sns_on_pipeline_success
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, Naming
from stock_assets_tests.conftest import table_rows
from stock_assets_tests.faults import FaultyHttpProxy, HttpFault

# --- pure message building ----------------------------------------------------------------------


def test_subjects_are_exact_and_sanitised():
    assert Naming().subject("Success") == "Dora_Explorer_Pipeline_Success"
    cohort = Naming(cohort="FTDE2301")
    assert sanitise_subject(cohort.subject("Failure")) == "FTDE2301_Dora_Explorer_Pipeline_Failure"
    # What moto accepts but AWS rejects: line breaks, non-ASCII, > 99 characters, empty.
    assert sanitise_subject("Zoë\nRun_Failure") == "Zo_ Run_Failure"
    assert len(sanitise_subject("x" * 300)) == 99
    assert sanitise_subject("  \t ") == "Pipeline_notification"
    assert all(32 <= ord(c) < 127 for c in sanitise_subject("a\u2028b\x00c\u00e9"))


def test_trigger_is_described_from_run_tags():
    marker_tags = {
        TRIGGER_TAG: "s3-marker",
        MARKER_BUCKET_TAG: "mon",
        MARKER_KEYS_TAG: '["a/.SUCCESS"]',
        "dagster/sensor_name": "success_marker_sensor",
    }
    assert describe_trigger(marker_tags) == (
        ".SUCCESS marker s3://mon/a/.SUCCESS (sensor success_marker_sensor)"
    )
    airflow = describe_trigger(
        {TRIGGER_TAG: "airflow", "stock_assets/airflow_dag_id": "stock_pipeline"}
    )
    assert airflow == "Airflow (stock_assets/airflow_dag_id=stock_pipeline)"
    assert describe_trigger({"dagster/schedule_name": "nightly"}) == "schedule nightly"
    assert describe_trigger({}).startswith("launched by hand")


def test_a_marker_key_cannot_write_lines_of_its_own_into_the_email():
    """Anyone may drop a marker under --marker-policy: its key is shown, escaped, on the
    trigger's one line; unicode stays readable."""
    forged = "x\n\nURGENT: re-enter your password at https://evil.example\u202e\n.SUCCESS"
    tags = {TRIGGER_TAG: "s3-marker", MARKER_BUCKET_TAG: "mon",
            MARKER_KEYS_TAG: json.dumps([forged, "ünïcødé/🚀.SUCCESS"])}  # fmt: skip
    shown = describe_trigger(tags)
    assert "\n" not in shown and "\u202e" not in shown
    assert "x\\n\\nURGENT" in shown and "\\u202e" in shown
    assert "s3://mon/ünïcødé/🚀.SUCCESS" in shown
    body = build_body(_report(trigger=shown))
    assert not any(line.startswith("URGENT") for line in body.splitlines())


def _report(**overrides) -> RunReport:
    started = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    values = dict(
        run_id="abc-123",
        job_name="stock_pipeline_job",
        succeeded=False,
        trigger="launched by hand (Dagster UI, GraphQL API or CLI)",
        run_url="http://ui:3000/runs/abc-123",
        started=started,
        ended=started + timedelta(seconds=75),
        numbers=RunNumbers(files_read=6, files_skipped=1, rows_read=100, rows_written=98,
                           rows_rejected=2, rows_loaded=None, table="historical_stocks_data"),
        checks=[ReportedCheck("historical_stocks_data", "row_count", False, "ERROR", "3 != 4"),
                ReportedCheck("historical_stock_data_csv", "no_duplicates", True)],
        step_errors=[StepError("top_companies", "Failure", "filter file does not exist",
                               ("ClientError: NoSuchKey",))],
    )  # fmt: skip
    values.update(overrides)
    return RunReport(**values)


def test_failure_body_names_the_step_its_error_and_the_numbers():
    body = build_body(_report())
    for expected in [
        "stock_pipeline_job FAILED",
        "Run id:     abc-123",
        "Run in UI:  http://ui:3000/runs/abc-123",
        "Started:    2026-11-01 12:00:00 UTC",
        "Ended:      2026-11-01 12:01:15 UTC",
        "Duration:   1 min 15 s",
        "files read:            6",
        "rows rejected:         2",
        "rows loaded into historical_stocks_data: not reached",
        "Asset checks (1 passed, 1 failed)",
        "FAILED (ERROR)   historical_stocks_data / row_count: 3 != 4",
        "step top_companies: Failure: filter file does not exist",
        "caused by ClientError: NoSuchKey",
    ]:
        assert expected in body, expected


def test_success_body_has_no_failure_section_and_stays_bounded():
    body = build_body(_report(succeeded=True, step_errors=[]))
    assert body.startswith("stock_pipeline_job SUCCEEDED") and "What failed" not in body
    huge = _report(step_errors=[StepError(f"s{i}", "E", "x" * 5000) for i in range(100)])
    assert len(build_body(huge)) <= 60_000


# --- the SNS resource on moto ---------------------------------------------------------------------


@pytest.fixture
def topic(clean_stack, naming) -> str:
    return boto3.client("sns").create_topic(Name=naming.sns_topic)["TopicArn"]


def inbox(stack, naming):
    return sent_messages(stack.moto.endpoint_url, naming.sns_topic)


def sns_error(kind: str, code: str) -> bytes:
    """What SNS itself answers when it fails a request (the query protocol's error document)."""
    return (
        f'<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>{kind}'
        f"</Type><Code>{code}</Code><Message>injected</Message></Error>"
        "<RequestId>fault-injection</RequestId></ErrorResponse>"
    ).encode()


@pytest.fixture
def sns_proxy(clean_stack, monkeypatch):
    """SNS, and only SNS, reaches moto through a proxy that fails requests on demand."""
    proxy = FaultyHttpProxy(clean_stack.moto.endpoint_url).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", proxy.url)
    yield proxy
    proxy.stop()


def test_retry_backs_off_then_gives_up_clearly(sns_proxy, topic):
    outage = HttpFault(method="POST", status=503, body=sns_error("Receiver", "ServiceUnavailable"))
    sns_proxy.faults.append(outage)
    resource = SNSResource(topic=topic)
    # botocore's standard mode: exponential backoff with jitter between the attempts.
    retries = resource.get_client().meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 3}
    with pytest.raises(NotificationError, match=r"after 3 attempt\(s\).*ServiceUnavailable"):
        resource.publish("s", "m")
    assert outage.hits == 3


def test_retry_does_not_repeat_a_permanent_error(sns_proxy, topic):
    denied = HttpFault(method="POST", status=403, body=sns_error("Sender", "AuthorizationError"))
    sns_proxy.faults.append(denied)
    with pytest.raises(NotificationError, match=r"after 1 attempt\(s\).*AuthorizationError"):
        SNSResource(topic=topic, max_attempts=5).publish("s", "m")
    assert denied.hits == 1


def test_the_topic_lookup_is_retried_as_the_publish_is(clean_stack, sns_proxy, topic, naming):
    # A name, not an ARN: the first call is the lookup (ListTopics); its 5xx is absorbed.
    hiccup = HttpFault(method="POST", status=500, times=1)
    sns_proxy.faults.append(hiccup)
    SNSResource(topic=naming.sns_topic).publish("Dora_Explorer_Pipeline_Success", "hi")
    assert hiccup.hits == 1 and [m.message for m in inbox(clean_stack, naming)] == ["hi"]


def test_publish_by_topic_name(clean_stack, topic, naming):
    message_id = SNSResource(topic=naming.sns_topic).publish("Dora_Explorer_Pipeline_Success", "hi")
    [sent] = inbox(clean_stack, naming)
    assert (sent.message_id, sent.subject, sent.message, sent.topic_arn) == (
        message_id, "Dora_Explorer_Pipeline_Success", "hi", topic
    )  # fmt: skip


def test_missing_topic_is_a_clear_error_without_retries(clean_stack):
    with pytest.raises(NotificationError, match="does not exist.*stock-assets provision"):
        SNSResource(topic="no-such-topic").publish("s", "m")


def test_unreachable_sns_gives_up_after_bounded_retries(clean_stack, monkeypatch):
    # Only SNS is down: boto3's per-service endpoint variable points it at a closed port.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{free_port()}")
    resource = SNSResource(
        topic="arn:aws:sns:eu-west-1:123456789012:t", max_attempts=2, timeout_seconds=1
    )
    with pytest.raises(NotificationError, match="after 2 attempt"):
        resource.publish("s", "m")


def test_an_sns_client_that_cannot_be_made_is_a_notification_error(monkeypatch):
    """Raised as NotificationError like a failed publish, so the run is tagged and the tick says
    why (botocore refuses an endpoint that is not a URL before any call)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", "not a url")
    with pytest.raises(NotificationError, match="SNS client could not be made.*Invalid endpoint"):
        SNSResource(topic="arn:aws:sns:eu-west-1:123456789012:t").publish("s", "m")


# --- the run-status sensors on real runs ----------------------------------------------------------


def run_job(instance: DagsterInstance):
    return defs.resolve_job_def("stock_pipeline_job").execute_in_process(
        instance=instance, raise_on_error=False, tags={TRIGGER_TAG: "test"}
    )


def sensor_context(instance, result, event, sensor_name, naming):
    return build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=event,
        resources={"sns": SNSResource(topic=naming.sns_topic), "settings": PipelineSettings()},
    )


def test_success_sensor_sends_one_actionable_message(seeded_stack, topic, naming, db):
    instance = DagsterInstance.ephemeral()
    result = run_job(instance)
    assert result.success
    with sensor_context(
        instance, result, result.get_run_success_event(), "sns_on_pipeline_success", naming
    ) as context:
        sns_on_pipeline_success(context)
        sns_on_pipeline_success(context)  # a replayed tick: must not email twice

    [sent] = inbox(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Success"
    rows = len(table_rows(db))
    for expected in [
        f"Run id:     {result.run_id}",
        f"http://127.0.0.1:3000/runs/{result.run_id}",
        "Triggered:  test",
        # The sample's filter names 7 files; bxg.us.csv is empty; no row is bad.
        "files read:            6",
        "files skipped:         1",
        "rows rejected:         0",
        f"rows loaded into historical_stocks_data: {rows:,}",
        "Asset checks (",
        "s3://de-mbd-predict-dora-explorer-s3-source/Output/historical_stock_data.csv",
    ]:
        assert expected in sent.message, expected
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[NOTIFICATION_TAG] == "sent" and tags[NOTIFICATION_ID_TAG] == sent.message_id


def test_a_re_executed_run_gets_its_own_email(seeded_stack, topic, naming):
    """The UI's re-execution copies every tag of the parent run, its notification tags too: the
    child must still be emailed, once, and say it is a re-execution."""
    instance = DagsterInstance.ephemeral()
    parent = run_job(instance)
    with sensor_context(
        instance, parent, parent.get_run_success_event(), "sns_on_pipeline_success", naming
    ) as context:
        sns_on_pipeline_success(context)
    copied = dict(instance.get_run_by_id(parent.run_id).tags)
    assert copied[NOTIFICATION_TAG] == "sent"
    child = defs.resolve_job_def("stock_pipeline_job").execute_in_process(
        instance=instance,
        tags={**copied, "dagster/parent_run_id": parent.run_id},
    )
    with sensor_context(
        instance, child, child.get_run_success_event(), "sns_on_pipeline_success", naming
    ) as context:
        sns_on_pipeline_success(context)
        sns_on_pipeline_success(context)  # a replayed tick: still one email for the child

    first, second = inbox(seeded_stack, naming)
    assert f"Run id:     {parent.run_id}" in first.message
    assert f"Run id:     {child.run_id}" in second.message
    assert f"Triggered:  re-execution of run {parent.run_id} (which was started by: test)" in (
        second.message
    )


def test_a_failure_after_the_tables_load_does_not_claim_the_table_unchanged():
    """A "Materialize all" also makes the Parquet copy after the table committed: if that step
    fails, the table holds this run's rows and the email must not say otherwise."""
    untouched = build_body(_report(numbers=RunNumbers(rows_loaded=None)))
    assert "leaves the table exactly as it was" in untouched
    loaded = build_body(_report(numbers=RunNumbers(rows_loaded=12)))
    assert "leaves the table exactly as it was" not in loaded
    assert "The table was loaded by this run before it failed" in loaded
    assert build_body(_report(canceled=True)).startswith("stock_pipeline_job CANCELED")


def test_only_the_pipelines_runs_get_the_course_email():
    """The run-status sensors watch every code location (runs made without one are emailed too),
    so another project's runs in the same instance must get no course email."""
    from dagster import AssetCheckKey, DagsterRun

    from stock_assets.run_report import is_pipeline_run

    def run(job: str, *keys: str) -> DagsterRun:
        selection = frozenset(AssetKey(k) for k in keys) or None
        return DagsterRun(job, "r", asset_selection=selection)

    assert is_pipeline_run(run("stock_pipeline_job"))
    assert is_pipeline_run(run("stock_pipeline_sharded_job"))
    assert is_pipeline_run(run("__ASSET_JOB", "historical_stocks_data"))
    assert is_pipeline_run(run("__ASSET_JOB", "historical_stock_data_parquet", "top_companies"))
    assert not is_pipeline_run(run("__ASSET_JOB", "historical_stock_data_parquet"))
    assert not is_pipeline_run(run("__ASSET_JOB", "raw_stock_files"))
    assert not is_pipeline_run(run("another_projects_job"))
    assert not is_pipeline_run(run("__ASSET_JOB", "another_projects_asset"))
    # The UI can run an asset's checks alone (the multi-asset can be subset).
    checks = {AssetCheckKey(AssetKey("historical_stock_data_csv"), "rows_reconcile")}
    assert is_pipeline_run(DagsterRun("__ASSET_JOB", "c", asset_check_selection=checks))
    other = {AssetCheckKey(AssetKey("another_projects_asset"), "fresh")}
    assert not is_pipeline_run(DagsterRun("__ASSET_JOB", "o", asset_check_selection=other))


def test_one_publication_at_a_time_per_run_even_with_three_callers():
    """The canceled and failure sensors and the redelivery can publish for one run at once:
    a third caller must not get in while the second holds the lock the first made."""
    import time

    from stock_assets.run_report import _one_at_a_time

    inside, peak, guard = 0, 0, threading.Lock()

    def publish(delay: float) -> None:
        nonlocal inside, peak
        time.sleep(delay)
        with _one_at_a_time("one-run"):
            with guard:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.3)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=publish, args=(d,)) for d in (0, 0.1, 0.35)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 1


def test_the_launchers_tag_names_its_run():
    """entry's runs are emailed by entry; a re-execution from the UI copies the tag, and is the
    sensors' to email."""
    from dagster import DagsterRun

    from stock_assets.notifications import EMAILED_BY_LAUNCHER_TAG
    from stock_assets.run_report import emailed_by_launcher

    assert emailed_by_launcher(DagsterRun("j", "r1", tags={EMAILED_BY_LAUNCHER_TAG: "r1"}))
    assert not emailed_by_launcher(DagsterRun("j", "r2", tags={EMAILED_BY_LAUNCHER_TAG: "r1"}))
    assert not emailed_by_launcher(DagsterRun("j", "r3"))


def test_observing_raw_stock_files_sends_no_course_email(seeded_stack, topic, naming):
    # The UI's "Observe" on raw_stock_files is a run too, but no pipeline run: graders look
    # for exactly one Success email per pipeline run.
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[AssetKey("raw_stock_files")]
    )
    assert result.success
    with sensor_context(
        instance, result, result.get_run_success_event(), "sns_on_pipeline_success", naming
    ) as context:
        sns_on_pipeline_success(context)
    assert inbox(seeded_stack, naming) == []


def failure_email_of_a_run(stack, naming):
    """Run the job (expected to fail), let the failure sensor react; the one email it sent."""
    instance = DagsterInstance.ephemeral()
    result = run_job(instance)
    assert not result.success
    with sensor_context(
        instance, result, result.get_run_failure_event(), "sns_on_pipeline_failure", naming
    ) as context:
        sns_on_pipeline_failure(context)
    [sent] = inbox(stack, naming)
    return sent


def test_failure_sensor_reports_the_failing_step_and_its_error(
    seeded_stack, topic, naming, s3_client
):
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    sent = failure_email_of_a_run(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"
    assert "stock_pipeline_job FAILED" in sent.message
    # The filter is read in the pipeline's one step; the failed check names the asset.
    assert (
        "step historical_stock_data: Failure: filter file "
        "s3://de-mbd-predict-dora-explorer-s3-source/CompanyNames/top_companies.txt does not exist"
    ) in sent.message
    assert "FAILED (ERROR)   top_companies / filter_file_valid" in sent.message
    assert "rows loaded into historical_stocks_data: not reached" in sent.message


def test_a_canceled_run_ends_with_a_failure_email(seeded_stack, topic, naming):
    from stock_assets.sensors import sns_on_pipeline_canceled

    instance = DagsterInstance.ephemeral()
    job = defs.resolve_job_def("stock_pipeline_job")
    run = instance.create_run_for_job(job, tags={TRIGGER_TAG: "test"})
    # What terminating a queued run from the UI does: CANCELING, then CANCELED.
    instance.report_run_canceling(run)
    instance.report_run_canceled(run)
    [canceled] = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_CANCELED
    ).records
    with build_run_status_sensor_context(
        sensor_name="sns_on_pipeline_canceled",
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        dagster_event=canceled.event_log_entry.dagster_event,
        resources={"sns": SNSResource(topic=naming.sns_topic), "settings": PipelineSettings()},
    ) as context:
        sns_on_pipeline_canceled(context)
        sns_on_pipeline_canceled(context)  # a replayed tick: still one email
    [sent] = inbox(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"
    assert "the run was canceled before it finished" in sent.message
    assert f"Run id:     {run.run_id}" in sent.message


def test_sns_outage_is_recorded_on_the_run_and_raised(seeded_stack, naming, monkeypatch):
    instance = DagsterInstance.ephemeral()
    result = run_job(instance)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{free_port()}")
    with build_run_status_sensor_context(
        sensor_name="sns_on_pipeline_success",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(),
        resources={
            "sns": SNSResource(topic=naming.sns_topic, max_attempts=2, timeout_seconds=1),
            "settings": PipelineSettings(),
        },
    ) as context, pytest.raises(NotificationError):  # fmt: skip
        # Raising makes the daemon mark the sensor tick FAILED (visible in the UI); no crash.
        sns_on_pipeline_success(context)
    assert instance.get_run_by_id(result.run_id).tags[NOTIFICATION_TAG] == "failed"
    engine_events = instance.get_records_for_run(
        result.run_id, of_type=DagsterEventType.ENGINE_EVENT
    ).records
    assert any("was NOT sent" in (r.event_log_entry.message or "") for r in engine_events)


def test_a_lost_email_is_sent_again_once_sns_answers(seeded_stack, topic, naming, monkeypatch):
    """SNS refused the email at the end of the run: the redelivery pass (sensor sns_redelivery)
    keeps trying without adding to the run's log, and once SNS answers the run gets its email,
    once."""
    from dagster import DagsterRun, DagsterRunStatus

    from stock_assets.run_report import redeliver_lost_emails

    instance = DagsterInstance.ephemeral()
    # Older runs tagged "failed" that get no course email (a re-execution of the Parquet copy
    # alone copied its parent's tag): more than one pass takes, and they must not starve it.
    parquet = frozenset({AssetKey("historical_stock_data_parquet")})
    for i in range(12):
        instance.add_run(
            DagsterRun("__ASSET_JOB", f"copied-tag-{i}", status=DagsterRunStatus.SUCCESS,
                       asset_selection=parquet, tags={NOTIFICATION_TAG: "failed"})
        )  # fmt: skip
    result = run_job(instance)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{free_port()}")
    with sensor_context(
        instance, result, result.get_run_success_event(), "sns_on_pipeline_success", naming
    ) as context, pytest.raises(NotificationError):  # fmt: skip
        sns_on_pipeline_success(context)
    sns = SNSResource(topic=naming.sns_topic, max_attempts=1, timeout_seconds=1)
    # A pass takes ten runs: the first leaves with the decoys (tagged "none"), the second
    # reaches the run and fails, SNS being still down; the run is left as it was.
    assert redeliver_lost_emails(instance, sns, naming, delay_seconds=0) == []
    with pytest.raises(NotificationError):
        redeliver_lost_emails(instance, sns, naming, delay_seconds=0)

    def engine_messages() -> list[str]:
        records = instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ENGINE_EVENT
        ).records
        return [r.event_log_entry.message or "" for r in records]

    assert len([m for m in engine_messages() if "was NOT sent" in m]) == 1
    assert instance.get_run_by_id(result.run_id).tags[NOTIFICATION_TAG] == "failed"

    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", seeded_stack.moto.endpoint_url)
    # Within a minute of its end a run is left to its run-status sensor.
    assert redeliver_lost_emails(instance, sns, naming) == []
    assert redeliver_lost_emails(instance, sns, naming, delay_seconds=0) == [result.run_id]
    assert redeliver_lost_emails(instance, sns, naming, delay_seconds=0) == []
    assert instance.get_run_by_id("copied-tag-0").tags[NOTIFICATION_TAG] == "none"
    [sent] = inbox(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Success"
    assert f"Run id:     {result.run_id}" in sent.message
    assert instance.get_run_by_id(result.run_id).tags[NOTIFICATION_TAG] == "sent"
    assert [m for m in engine_messages() if "sent late" in m]


def test_unexpected_error_is_reported_unwrapped(
    seeded_stack, topic, naming, monkeypatch, s3_client
):
    # The database is down: the load step raises psycopg2's own error, not a Dagster Failure.
    monkeypatch.setenv(
        "STOCK_ASSETS_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    sent = failure_email_of_a_run(seeded_stack, naming)
    assert "step historical_stock_data: OperationalError: connection to server" in sent.message
    assert "DagsterExecutionStepExecutionError" not in sent.message
    # What did happen before the failure is still reported: the CSV, published without the table.
    csv = s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()
    assert f"rows written to CSV:   {len(csv.splitlines()):,}" in sent.message


def test_the_report_names_the_table_the_run_loaded(seeded_stack, local_stack, db):
    from dagster import materialize
    from psycopg2 import sql

    from stock_assets.assets import historical_stock_data, raw_stock_files
    from stock_assets.resources import PostgresResource, StockS3Resource
    from stock_assets.run_report import run_numbers
    from stock_assets.settings import TABLE_NAME

    instance = DagsterInstance.ephemeral()
    elsewhere = "stocks_elsewhere"
    try:
        result = materialize(
            [raw_stock_files, historical_stock_data],
            resources={
                "s3": StockS3Resource(),
                "postgres": PostgresResource(
                    database_url=local_stack.env["STOCK_ASSETS_DATABASE_URL"], table=elsewhere
                ),
                "settings": PipelineSettings(),
            },
            instance=instance,
        )
        assert result.success
        numbers = run_numbers(instance, result.run_id, TABLE_NAME)
        assert numbers.table == elsewhere
        assert numbers.rows_loaded > 0
    finally:
        with db.cursor() as cur:
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(elsewhere))
            )


def test_a_run_ended_both_canceled_and_failed_gets_one_email(seeded_stack, topic, naming):
    # The daemon's max-runtime limit: CANCELING, the run worker's CANCELED, then the daemon's
    # own FAILURE. The canceled and failure sensors both fire, in the same tick and in parallel
    # threads (dagster.yaml: sensors.use_threads), and must not both email.
    from stock_assets.sensors import sns_on_pipeline_canceled

    instance = DagsterInstance.ephemeral()
    run = instance.create_run_for_job(
        defs.resolve_job_def("stock_pipeline_job"), tags={TRIGGER_TAG: "test"}
    )
    instance.report_run_canceling(run, message="Canceling due to exceeding maximum runtime")
    instance.report_run_canceled(run)
    instance.report_run_failed(run, "Exceeded maximum runtime of 3600 seconds.")
    sensors = {
        DagsterEventType.RUN_CANCELED: ("sns_on_pipeline_canceled", sns_on_pipeline_canceled),
        DagsterEventType.RUN_FAILURE: ("sns_on_pipeline_failure", sns_on_pipeline_failure),
    }
    contexts = []
    for event_type, (name, evaluate) in sensors.items():
        [record] = instance.get_records_for_run(run.run_id, of_type=event_type).records
        context = build_run_status_sensor_context(
            sensor_name=name,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run.run_id),
            dagster_event=record.event_log_entry.dagster_event,
            resources={"sns": SNSResource(topic=naming.sns_topic), "settings": PipelineSettings()},
        )
        contexts.append((context.__enter__(), evaluate))
    start = threading.Barrier(len(contexts))

    def tick(context, evaluate) -> None:
        start.wait()
        evaluate(context)

    try:
        with ThreadPoolExecutor(len(contexts)) as pool:
            for future in [pool.submit(tick, *pair) for pair in contexts]:
                future.result()
    finally:
        for context, _ in contexts:
            context.__exit__(None, None, None)
    [sent] = inbox(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"


def test_a_sharded_run_gets_one_success_email_through_the_sensors_tick(seeded_stack, topic, naming):
    """Spec §5: every attempted run gets its email, stock_pipeline_sharded_job's too. The sensor
    is evaluated as the daemon evaluates it, a tick over the run-status events after its cursor:
    so the runs it monitors are part of what is tested, not only what it does with one."""
    from dagster import build_sensor_context

    instance = DagsterInstance.ephemeral()
    resources = {"sns": SNSResource(topic=naming.sns_topic), "settings": PipelineSettings()}

    def tick(cursor: str | None) -> str | None:
        context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return sns_on_pipeline_success.evaluate_tick(context).cursor

    cursor = tick(None)  # the first tick only places the cursor after the events so far
    result = defs.resolve_job_def("stock_pipeline_sharded_job").execute_in_process(
        instance=instance,
        run_config={"resources": {"settings": {"config": {"shards": 1}}}},
        tags={TRIGGER_TAG: "test"},
    )
    assert result.success
    cursor = tick(cursor)
    tick(cursor)  # the next tick: nothing new, no second email
    [sent] = inbox(seeded_stack, naming)
    assert sent.subject == "Dora_Explorer_Pipeline_Success"
    assert "stock_pipeline_sharded_job SUCCEEDED" in sent.message
    assert f"Run id:     {result.run_id}" in sent.message
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[NOTIFICATION_TAG] == "sent" and tags[NOTIFICATION_ID_TAG] == sent.message_id
