"""A finished run's report, read from the Dagster instance, and its one publication through SNS.

`build_report` reads the run's record, its assets' materialisation metadata (through the typed sets
of `stock_assets.metadata`), its asset checks and its step failures into the Dagster-free
`RunReport`. `publish_run_outcome` is the only way a run's email goes out: the run-status sensors
and `python -m stock_assets.entry` (unless `--no-notify`) both call it. Public Dagster APIs only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from stock_assets.jobs import STOCK_PIPELINE_JOB
from stock_assets.metadata import (
    CSV,
    TABLE,
    TOP_COMPANIES,
    VIEW,
    PipelineCounts,
    TableMetadata,
)
from stock_assets.notifications import (
    CANCELED_REASON,
    EMAILED_BY_LAUNCHER_TAG,
    NOTIFICATION_ID_TAG,
    NOTIFICATION_TAG,
    NOTIFIED_RUN_TAG,
    NotificationError,
    ReportedCheck,
    RunNumbers,
    RunReport,
    StepError,
    build_body,
    describe_trigger,
    run_url,
    ui_base_url,
)
from stock_assets.resources import SNSResource
from stock_assets.settings import TABLE_NAME, Naming
from stock_assets.sharded import SHARDED_JOB


def _materialization_metadata(
    instance: DagsterInstance, run_id: str
) -> dict[AssetKey, Mapping[str, Any]]:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None:
            found[materialization.asset_key] = materialization.metadata
    return found


def run_numbers(instance: DagsterInstance, run_id: str, table: str = TABLE_NAME) -> RunNumbers:
    """The counts the assets recorded; None for those of a step that never ran."""
    metadata = _materialization_metadata(instance, run_id)
    counts = PipelineCounts.extract(metadata.get(CSV, {}))
    written = TableMetadata.extract(metadata.get(CSV, {}))
    loaded = TableMetadata.extract(metadata.get(TABLE, {}))
    return RunNumbers(
        files_selected=counts.files_selected,
        files_read=counts.files_read,
        files_skipped=counts.files_skipped,
        rows_read=counts.rows_read,
        rows_written=written.row_count,
        rows_rejected=counts.rows_rejected,
        rows_loaded=loaded.row_count,
        output_location=counts.location,
        rejects=counts.rejects or {},
        # The table the run loaded (the resource may name another than the default).
        table=loaded.table_name or table,
    )


def check_outcomes(instance: DagsterInstance, run_id: str) -> list[ReportedCheck]:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    outcomes = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is None:
            continue
        outcomes.append(
            ReportedCheck(
                asset=evaluation.asset_key.to_user_string(),
                name=evaluation.check_name,
                passed=evaluation.passed,
                severity=getattr(evaluation.severity, "value", str(evaluation.severity)),
                description=evaluation.description,
            )
        )
    return outcomes


def step_failures(instance: DagsterInstance, run_id: str) -> list[DagsterEvent]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    return [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]


def _causes(error: Any) -> list[Any]:
    chain = []
    while error is not None and len(chain) < 5:
        chain.append(error)
        error = error.cause or error.context
    return chain


def _error_text(error: Any) -> tuple[str, str]:
    """(class name, message) — the stored message repeats "module.Class: " in front; drop it."""
    name = error.cls_name or "Error"
    text = error.message.strip()
    prefix = re.match(rf"^[\w.]*\b{re.escape(name)}: ?", text)
    return name, text[prefix.end() :] if prefix else text


def step_error(event: DagsterEvent) -> StepError:
    """The real error of a step failure, not Dagster's generic wrapper around it."""
    data = event.event_specific_data
    chain = _causes(getattr(data, "error", None))
    # User-code errors arrive wrapped ("Error occurred while executing op …"): skip the wrapper.
    if len(chain) > 1 and chain[0].cls_name == "DagsterExecutionStepExecutionError":
        chain = chain[1:]
    user_failure = getattr(data, "user_failure_data", None)
    if user_failure is not None and user_failure.description:
        head_type, head_message = "Failure", user_failure.description
    elif chain:
        head_type, head_message = _error_text(chain[0])
    else:
        head_type, head_message = "Error", event.message or "no error recorded"
    causes = tuple(": ".join(_error_text(c)) for c in chain[1:])
    return StepError(event.step_key or "unknown step", head_type, head_message.strip(), causes)


def _time(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def build_report(
    instance: DagsterInstance,
    run: DagsterRun,
    succeeded: bool,
    run_failure_message: str | None = None,
) -> RunReport:
    record = instance.get_run_record_by_id(run.run_id)
    failures = [] if succeeded else step_failures(instance, run.run_id)
    return RunReport(
        run_id=run.run_id,
        job_name=run.job_name,
        succeeded=succeeded,
        trigger=describe_trigger(run.tags),
        run_url=run_url(ui_base_url(), run.run_id),
        started=_time(record.start_time if record else None),
        ended=_time(record.end_time if record else None),
        numbers=run_numbers(instance, run.run_id),
        checks=check_outcomes(instance, run.run_id),
        step_errors=[step_error(e) for e in failures],
        run_failure_message=run_failure_message,
        canceled=run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED),
    )


def emailed_by_launcher(run: DagsterRun) -> bool:
    """Whether the process that made this run emails it itself (or was told not to). The tag
    names the run: a re-execution that copied it is the sensors' to email."""
    return run.tags.get(EMAILED_BY_LAUNCHER_TAG) == run.run_id


def already_sent(run: DagsterRun) -> bool:
    """Whether this run's own email went out. The UI's and GraphQL's re-executions copy every
    tag of the parent run, its "sent" too: that one is not the child's."""
    if run.tags.get(NOTIFICATION_TAG) != "sent":
        return False
    sent_for = run.tags.get(NOTIFIED_RUN_TAG)
    # Tags written before the run id was recorded with them: only a re-execution can be wrong.
    return sent_for == run.run_id if sent_for else run.parent_run_id is None


def outcome_subject(naming: Naming, succeeded: bool) -> str:
    return naming.subject("Success" if succeeded else "Failure")


# What the course's email is about (the Parquet copy and raw_stock_files' observations are not).
EMAILED_ASSETS = frozenset({TOP_COMPANIES, CSV, TABLE, VIEW})


def is_pipeline_run(run: DagsterRun) -> bool:
    """Whether the run gets the course's email: a run of the pipeline's jobs, or one that
    materialises any of EMAILED_ASSETS (from the UI). Not: a run that touches only the Parquet
    copy (refreshed by automation) or observes raw_stock_files, nor another code location's run
    (the sensors watch every location, so that runs without one are seen too)."""
    if run.asset_selection or run.asset_check_selection:  # from the UI: assets, or checks alone
        checked = {check.asset_key for check in run.asset_check_selection or ()}
        return bool((set(run.asset_selection or ()) | checked) & EMAILED_ASSETS)
    return run.job_name in (STOCK_PIPELINE_JOB, SHARDED_JOB)


_RUN_LOCKS: dict[str, tuple[threading.Lock, int]] = {}  # run id → (its lock, callers holding it)
_RUN_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _one_at_a_time(run_id: str) -> Iterator[None]:
    """One publication at a time per run in this process; other runs' emails are not held up
    (a publication may retry SNS for many seconds). A run's lock goes when no caller holds or
    awaits it any more (a later caller then makes a new one, nobody being inside)."""
    with _RUN_LOCKS_GUARD:
        lock, callers = _RUN_LOCKS.get(run_id, (threading.Lock(), 0))
        _RUN_LOCKS[run_id] = (lock, callers + 1)
    try:
        with lock:
            yield
    finally:
        with _RUN_LOCKS_GUARD:
            lock, callers = _RUN_LOCKS[run_id]
            if callers == 1:
                del _RUN_LOCKS[run_id]
            else:
                _RUN_LOCKS[run_id] = (lock, callers - 1)


def publish_run_outcome(
    instance: DagsterInstance,
    run: DagsterRun,
    sns: SNSResource,
    naming: Naming,
    *,
    succeeded: bool,
    run_failure_message: str | None = None,
    log: logging.Logger | None = None,
    retrying: bool = False,
    launcher: bool = False,
) -> str | None:
    """Email the run's outcome once; the SNS message id, or None if it had been sent already
    or the run is not the pipeline's (`is_pipeline_run`).

    A failed publication is made visible where people look (the run's tags and event log, `log`)
    and re-raised, so a sensor's tick fails in the UI and `entry` exits 3. `retrying` (an email
    sent again, see `redeliver_lost_emails`): a failure is only raised, the run already says it.
    A run tagged EMAILED_BY_LAUNCHER_TAG is emailed only by its `launcher` (`entry`).
    """
    # The canceled and failure sensors can both fire for one run (the daemon's max-runtime limit
    # reports CANCELED, then FAILURE) in parallel threads of the code server: each must see the
    # other's "sent" tag before it publishes.
    with _one_at_a_time(run.run_id):
        run = instance.get_run_by_id(run.run_id) or run
        if not is_pipeline_run(run) or (emailed_by_launcher(run) and not launcher):
            if log:
                log.info(f"run {run.run_id}: not a pipeline run, or its launcher emails it")
            return None
        if already_sent(run):
            # A replayed tick (the daemon killed after the tag was written): no second email. Only
            # a kill between SNS's answer and this tag can still send one twice (at least once).
            if log:
                log.info(f"notification for run {run.run_id} already sent; skipping")
            return None
        subject = outcome_subject(naming, succeeded)
        body = build_body(build_report(instance, run, succeeded, run_failure_message))
        try:
            message_id = sns.publish(subject, body)
        except NotificationError as err:
            message = f"SNS notification for run {run.run_id} was NOT sent: {err}"
            if log:
                log.error(message)
            if not retrying:
                instance.add_run_tags(run.run_id, {NOTIFICATION_TAG: "failed"})
                instance.report_engine_event(message, dagster_run=run)
            raise
        sent = {NOTIFICATION_TAG: "sent", NOTIFICATION_ID_TAG: message_id}
        instance.add_run_tags(run.run_id, {**sent, NOTIFIED_RUN_TAG: run.run_id})
        if retrying:
            instance.report_engine_event(f"SNS notification sent late ({message_id})", run)
        if log:
            log.info(f"sent {subject!r} for run {run.run_id} (SNS message {message_id})")
        return message_id


def publish_start_failure(
    sns: SNSResource, naming: Naming, job_name: str, trigger: str, error: BaseException
) -> str:
    """The Failure email of a run that could not even be created (e.g. its configuration did
    not resolve: an unset STOCK_ASSETS_DATABASE_URL): nothing ran, nothing changed."""
    report = RunReport(
        run_id="none (the run could not be created)",
        job_name=job_name,
        succeeded=False,
        trigger=trigger,
        run_url=ui_base_url(),
        run_failure_message=f"{type(error).__name__}: {error}",
    )
    return sns.publish(outcome_subject(naming, False), build_body(report))


# Emails SNS refused are sent again for runs that ended within the last day, once a minute has
# passed (the run-status sensor's own attempt comes first), oldest first.
REDELIVERY_WINDOW = timedelta(days=1)
REDELIVERY_DELAY_SECONDS = 60
_ENDED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def redeliver_lost_emails(
    instance: DagsterInstance,
    sns: SNSResource,
    naming: Naming,
    log: logging.Logger | None = None,
    limit: int = 10,
    delay_seconds: float = REDELIVERY_DELAY_SECONDS,
) -> list[str]:
    """Publish again the outcome of runs whose email SNS refused (tagged "failed"), the
    launcher's runs too (it has exited); the ids of the runs now emailed. Stops at the first
    refusal (NotificationError): SNS is still down, and the next call tries again. A run that
    gets no course email (a copied tag) is tagged "none" and leaves the query."""
    lost = RunsFilter(
        tags={NOTIFICATION_TAG: "failed"},
        statuses=_ENDED,
        updated_after=datetime.now(UTC) - REDELIVERY_WINDOW,
    )
    sent = []
    for record in instance.get_run_records(lost, limit=limit, ascending=True):
        if record.end_time and time.time() - record.end_time < delay_seconds:
            continue
        run = record.dagster_run
        reason = None
        if run.status == DagsterRunStatus.CANCELED:
            reason = CANCELED_REASON
        elif run.status == DagsterRunStatus.FAILURE:
            failures = instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.RUN_FAILURE
            ).records
            reason = failures[-1].event_log_entry.message if failures else None
        succeeded = run.status == DagsterRunStatus.SUCCESS
        try:
            message_id = publish_run_outcome(
                instance, run, sns, naming, succeeded=succeeded, run_failure_message=reason,
                log=log, retrying=True, launcher=True,
            )  # fmt: skip
        except NotificationError:
            raise
        except Exception:  # this run's report could not be made: the others still go out
            if log:
                log.exception(f"run {run.run_id}: its email could not be made")
            continue
        if message_id:
            sent.append(run.run_id)
        elif not is_pipeline_run(run):
            instance.add_run_tags(run.run_id, {NOTIFICATION_TAG: "none"})
    return sent
