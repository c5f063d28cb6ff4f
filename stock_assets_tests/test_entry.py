"""`python -m stock_assets.entry`: the processing code's entry, shipped in `Scripts/` beside the SQL
(SPEC §2), runs the pipeline once on a real Dagster instance and says how it went in its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources

import boto3
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from stock_assets import entry
from stock_assets.bucket_layout import ENTRY_KEY, INSERT_QUERY_KEY
from stock_assets.local.sns_inbox import sent_messages
from stock_assets.notifications import NOTIFICATION_TAG, TRIGGER_TAG
from stock_assets.pipeline.sql_files import read_sql
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY
from stock_assets_tests.conftest import REPO_ROOT, table_rows


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_entry_runs_the_pipeline_once_and_records_the_run(
    seeded_stack, dagster_home, s3_client, naming, db
):
    boto3.client("sns").create_topic(Name=naming.sns_topic)
    # A real process, as a grader or cron would start it.
    done = subprocess.run(
        [sys.executable, "-m", "stock_assets.entry", "--tag", "purpose=test"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stock_pipeline_job succeeded" in done.stdout
    # Every run ends with its email (the daemon's sensors do not see runs made here).
    [sent] = sent_messages(seeded_stack.moto.endpoint_url, naming.sns_topic)
    assert sent.subject == "Dora_Explorer_Pipeline_Success"
    head = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    assert len(table_rows(db)) == int(head["Metadata"]["row-count"]) > 0
    # Recorded in the instance at DAGSTER_HOME, so the UI lists it, with who started it.
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs()
    assert run.status == DagsterRunStatus.SUCCESS and run.job_name == "stock_pipeline_job"
    assert run.tags[TRIGGER_TAG] == entry.ENTRY_TRIGGER and run.tags["purpose"] == "test"


def test_a_failed_run_exits_non_zero_naming_the_step_and_can_email(
    seeded_stack, dagster_home, s3_client, naming, capsys
):
    boto3.client("sns").create_topic(Name=naming.sns_topic)
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    assert entry.main([]) == 1
    err = capsys.readouterr().err
    assert "stock_pipeline_job FAILED" in err
    assert "step historical_stock_data: Failure: filter file" in err
    [sent] = sent_messages(seeded_stack.moto.endpoint_url, naming.sns_topic)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"
    assert "Triggered:  python -m stock_assets.entry" in sent.message
    with DagsterInstance.get() as instance:
        [run] = instance.get_runs()
    assert run.tags[NOTIFICATION_TAG] == "sent"


def test_no_notify_runs_without_an_email(seeded_stack, dagster_home, naming):
    boto3.client("sns").create_topic(Name=naming.sns_topic)
    assert entry.main(["--no-notify"]) == 0
    assert sent_messages(seeded_stack.moto.endpoint_url, naming.sns_topic) == []


def test_scripts_holds_the_sql_and_the_entry_a_grader_can_run(seeded_stack, s3_client, naming):
    def body(key: str) -> bytes:
        return s3_client.get_object(Bucket=naming.source_bucket, Key=key)["Body"].read()

    assert body(INSERT_QUERY_KEY) == read_sql("insert_query.sql").encode()
    shipped = body(ENTRY_KEY)
    assert shipped == resources.files("stock_assets").joinpath("entry.py").read_bytes()
    assert b"python -m stock_assets.entry" in shipped  # it says how to run it


def test_the_downloaded_entry_runs_as_a_script(seeded_stack, s3_client, naming, tmp_path):
    path = tmp_path / "entry.py"
    s3_client.download_file(naming.source_bucket, ENTRY_KEY, str(path))
    done = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "exit 0 on success, 1 on failure" in done.stdout


def test_bad_tags_are_refused():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        entry.main(["--tag", "novalue"])


def test_a_run_that_cannot_be_created_still_ends_with_a_failure_email(
    seeded_stack, dagster_home, naming
):
    """Without STOCK_ASSETS_DATABASE_URL the job's resources do not resolve, and Dagster refuses
    the run before it exists: the entry says so, exits 1 and still sends the Failure email."""
    boto3.client("sns").create_topic(Name=naming.sns_topic)
    env = {k: v for k, v in os.environ.items() if k != "STOCK_ASSETS_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "stock_assets.entry"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "stock_pipeline_job could not start" in done.stderr
    [sent] = sent_messages(seeded_stack.moto.endpoint_url, naming.sns_topic)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"
    assert "the run could not be created" in sent.message
    assert "STOCK_ASSETS_DATABASE_URL" in sent.message
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert not instance.get_runs()


def test_a_dagster_failure_after_the_run_exists_reports_that_run(
    seeded_stack, dagster_home, naming, capsys, monkeypatch
):
    """Dagster itself can fail once the run exists (its storage gone mid-run): that is no
    "could not be created". The entry names the run and emails its Failure, with its id.
    Such a failure cannot be made to happen here: Dagster's execute_in_process is replaced by
    one that creates the run, then raises."""
    from dagster import JobDefinition

    boto3.client("sns").create_topic(Name=naming.sns_topic)

    def create_then_fail(self, *, instance, tags, run_id, **_):
        instance.create_run_for_job(self, run_id=run_id, tags=tags)
        raise RuntimeError("the instance's storage went away")

    monkeypatch.setattr(JobDefinition, "execute_in_process", create_then_fail)
    assert entry.main([]) == 1
    with DagsterInstance.get() as instance:
        [run] = instance.get_runs()
    assert f"FAILED (run {run.run_id}): the instance's storage went away" in capsys.readouterr().err
    [sent] = sent_messages(seeded_stack.moto.endpoint_url, naming.sns_topic)
    assert sent.subject == "Dora_Explorer_Pipeline_Failure"
    assert f"Run id:     {run.run_id}" in sent.message
