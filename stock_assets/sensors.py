"""Event-driven runs and their notifications.

- `success_marker_sensor`: a `.SUCCESS` object anywhere in the monitored bucket starts
  `stock_pipeline_job`.
- `sns_on_pipeline_success` / `sns_on_pipeline_failure` / `sns_on_pipeline_canceled`: every
  finished pipeline run (the job, or assets materialised from the UI), however it was launched,
  ends in one email through SNS; a canceled run's is a failure email.

The message text is built by the Dagster-free `stock_assets.notifications`; this module reads S3
listings, run tags and run events, publishes through the SNS resource, and records each
notification's outcome on its run (a tag and an engine event).
"""

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster._core.events import EngineEventData
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info
from dagster_aws.s3 import S3Resource

from stock_assets.jobs import stock_pipeline_job
from stock_assets.notifications import (
    MARKER_BUCKET_TAG,
    MARKER_COUNT_TAG,
    MARKER_KEYS_TAG,
    MAX_TAG_VALUE_BYTES,
    NOTIFICATION_ID_TAG,
    NOTIFICATION_TAG,
    TRIGGER_MARKER,
    TRIGGER_TAG,
    NotificationError,
    ReportedCheck,
    RunNumbers,
    RunReport,
    StepError,
    build_body,
    describe_trigger,
    marker_keys_tag,
    run_url,
    sensor_interval_seconds,
    shorten_key,
    ui_base_url,
)
from stock_assets.pipeline.s3 import list_objects
from stock_assets.resources import PipelineSettings, SNSResource
from stock_assets.settings import TABLE_NAME

MARKER_SUFFIX = ".SUCCESS"
# Markers found in one tick share a run, up to this many per run and as many as fit in one tag
# (MAX_TAG_VALUE_BYTES), so the tag listing them stays readable and storable.
MAX_MARKERS_PER_RUN = 100
CURSOR_VERSION = 1

CSV_ASSET = AssetKey("historical_stock_data_csv")
TABLE_ASSET = AssetKey("historical_stocks_data")


# --------------------------------------------------------------------------------------------
# The .SUCCESS sensor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    key: str
    etag: str
    last_modified: str

    @property
    def version(self) -> str:
        # An empty marker re-uploaded has the same ETag (the MD5 of nothing), so the write time
        # tells the uploads apart. S3 keeps LastModified to the second: two identical uploads of
        # one key within the same second look like one object to any listing.
        return f"{self.etag}@{self.last_modified}"


def list_markers(client: Any, bucket: str) -> list[Marker]:
    """Every `.SUCCESS` object in the bucket, at any prefix, across all listing pages."""
    return [
        Marker(o.key, o.etag.strip('"'), o.last_modified.astimezone(UTC).isoformat())
        for o in list_objects(client, bucket, prefix="")
        if o.key.endswith(MARKER_SUFFIX) and o.last_modified is not None
    ]


def parse_cursor(cursor: str | None) -> dict[str, str]:
    """key → version of every marker already acted on. An unreadable cursor is an error: starting
    from nothing would replay every marker in the bucket."""
    if not cursor:
        return {}
    data = json.loads(cursor)
    if data.get("version") != CURSOR_VERSION:
        raise ValueError(f"unknown cursor version {data.get('version')!r}")
    return dict(data["seen"])


def dump_cursor(seen: Mapping[str, str]) -> str:
    return json.dumps({"version": CURSOR_VERSION, "seen": dict(sorted(seen.items()))})


def new_markers(markers: Sequence[Marker], seen: Mapping[str, str]) -> list[Marker]:
    """Markers not yet acted on: a key never seen, or a key written again since."""
    return sorted((m for m in markers if seen.get(m.key) != m.version), key=lambda m: m.key)


def next_seen(markers: Sequence[Marker]) -> dict[str, str]:
    # Only keys still in the bucket: the cursor stays as small as the bucket's marker count, and
    # a deleted marker uploaded again later is a new marker.
    return {m.key: m.version for m in markers}


def marker_chunks(markers: Sequence[Marker]) -> list[list[Marker]]:
    """The markers, in order, cut into runs: each run's keys tag within MAX_TAG_VALUE_BYTES and
    at most MAX_MARKERS_PER_RUN keys. Every marker is in exactly one chunk."""
    chunks: list[list[Marker]] = []
    chunk: list[Marker] = []
    size = 2  # "[]"
    for marker in markers:
        # Each element costs its JSON form, plus ", " after the first.
        cost = len(marker_keys_tag([marker.key]).encode()) - 2 + (2 if chunk else 0)
        if chunk and (len(chunk) == MAX_MARKERS_PER_RUN or size + cost > MAX_TAG_VALUE_BYTES):
            chunks.append(chunk)
            chunk, size = [], 2
            cost -= 2
        chunk.append(marker)
        size += cost
    if chunk:
        chunks.append(chunk)
    return chunks


def marker_run_requests(bucket: str, markers: Sequence[Marker]) -> list[RunRequest]:
    requests = []
    for chunk in marker_chunks(markers):
        identity = "\n".join(f"{m.key}\t{m.version}" for m in chunk)
        requests.append(
            RunRequest(
                # Dagster launches a run key once per sensor: a second guard behind the cursor
                # (e.g. a tick interrupted after launching but before saving its cursor).
                run_key="markers-" + hashlib.sha256(identity.encode()).hexdigest()[:24],
                tags={
                    TRIGGER_TAG: TRIGGER_MARKER,
                    MARKER_BUCKET_TAG: bucket,
                    # Keys over MAX_KEY_IN_TAG_BYTES appear shortened, with their hash.
                    MARKER_KEYS_TAG: marker_keys_tag([m.key for m in chunk]),
                    MARKER_COUNT_TAG: str(len(chunk)),
                },
            )
        )
    return requests


@sensor(
    job=stock_pipeline_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts stock_pipeline_job when a `.SUCCESS` object appears (or is written again) "
    "anywhere in the monitored bucket. The new markers found in one tick share one run (more "
    "only past a run's tag budget of 100 keys) and are all listed in its tags.",
)
def success_marker_sensor(
    context: SensorEvaluationContext, s3: S3Resource, settings: PipelineSettings
) -> SensorResult | SkipReason:
    bucket = settings.naming.monitored_bucket
    client = s3.get_client()
    try:
        markers = list_markers(client, bucket)
    except client.exceptions.NoSuchBucket:
        return SkipReason(
            f"monitored bucket s3://{bucket} does not exist: create it with "
            "`stock-assets provision` (or set STOCK_ASSETS_MONITORED_BUCKET)"
        )
    seen = parse_cursor(context.cursor)
    fresh = new_markers(markers, seen)
    cursor = dump_cursor(next_seen(markers))
    if not fresh:
        return SensorResult(
            skip_reason=f"no new {MARKER_SUFFIX} marker in s3://{bucket} "
            f"({len(markers)} marker(s) present, all acted on already)",
            cursor=cursor,
        )
    context.log.info(
        f"{len(fresh)} new marker(s) in s3://{bucket}: "
        + ", ".join(shorten_key(m.key) for m in fresh[:20])
    )
    return SensorResult(run_requests=marker_run_requests(bucket, fresh), cursor=cursor)


# --------------------------------------------------------------------------------------------
# Run-status sensors → SNS
# --------------------------------------------------------------------------------------------


def _as_int(metadata: Mapping[str, Any], key: str) -> int | None:
    entry = metadata.get(key)
    value = getattr(entry, "value", entry)
    return int(value) if isinstance(value, (int, float)) else None


def _materialization_metadata(instance: DagsterInstance, run_id: str) -> dict[AssetKey, Any]:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None:
            found[materialization.asset_key] = materialization.metadata
    return found


def run_numbers(instance: DagsterInstance, run_id: str, table: str) -> RunNumbers:
    metadata = _materialization_metadata(instance, run_id)
    csv = metadata.get(CSV_ASSET, {})
    loaded = metadata.get(TABLE_ASSET, {})
    location = csv.get("location")
    rejects = getattr(csv.get("rejects"), "value", None)
    loaded_table = loaded.get("dagster/table_name")
    return RunNumbers(
        files_selected=_as_int(csv, "files_selected"),
        files_read=_as_int(csv, "files_read"),
        files_skipped=_as_int(csv, "files_skipped"),
        rows_read=_as_int(csv, "rows_read"),
        rows_written=_as_int(csv, "dagster/row_count"),
        rows_rejected=_as_int(csv, "rows_rejected"),
        rows_loaded=_as_int(loaded, "dagster/row_count"),
        output_location=str(getattr(location, "value", location)) if location else None,
        rejects=dict(rejects) if isinstance(rejects, dict) else {},
        # The table the run loaded (the resource may name another than the default).
        table=str(getattr(loaded_table, "value", loaded_table)) if loaded_table else table,
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


def _causes(error: SerializableErrorInfo | None) -> list[SerializableErrorInfo]:
    chain = []
    while error is not None and len(chain) < 5:
        chain.append(error)
        error = error.cause or error.context
    return chain


def _error_text(error: SerializableErrorInfo) -> tuple[str, str]:
    """(class name, message) — the stored message repeats "module.Class: " in front; drop it."""
    name = error.cls_name or "Error"
    text = error.message.strip()
    prefix = re.match(rf"^[\w.]*\b{re.escape(name)}: ?", text)
    return name, text[prefix.end() :] if prefix else text


def step_error(event: Any) -> StepError:
    """The real error of a step failure, not Dagster's generic wrapper around it."""
    data = event.event_specific_data
    chain = _causes(data.error if data else None)
    # User-code errors arrive wrapped ("Error occurred while executing op …"): skip the wrapper.
    if len(chain) > 1 and chain[0].cls_name == "DagsterExecutionStepExecutionError":
        chain = chain[1:]
    user_failure = data.user_failure_data if data else None
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
    step_failures: Sequence[Any] = (),
    run_failure_message: str | None = None,
    table: str | None = None,
) -> RunReport:
    record = instance.get_run_record_by_id(run.run_id)
    return RunReport(
        run_id=run.run_id,
        job_name=run.job_name,
        succeeded=succeeded,
        trigger=describe_trigger(run.tags),
        run_url=run_url(ui_base_url(), run.run_id),
        started=_time(record.start_time if record else None),
        ended=_time(record.end_time if record else None),
        numbers=run_numbers(instance, run.run_id, table or "the table"),
        checks=check_outcomes(instance, run.run_id),
        step_errors=[step_error(e) for e in step_failures],
        run_failure_message=run_failure_message,
    )


def _record_notification_failure(
    context: RunStatusSensorContext, run: DagsterRun, err: NotificationError
) -> None:
    """Make a lost notification visible where people look: the run's log and tags, the daemon
    log, and (by re-raising) the sensor's failed tick in the UI."""
    message = f"SNS notification for run {run.run_id} was NOT sent: {err}"
    context.log.error(message)
    context.instance.add_run_tags(run.run_id, {NOTIFICATION_TAG: "failed"})
    context.instance.report_engine_event(
        message,
        dagster_run=run,
        engine_event_data=EngineEventData(error=serializable_error_info_from_exc_info((
            type(err), err, err.__traceback__
        ))),
    )  # fmt: skip


def notify(
    context: RunStatusSensorContext,
    sns: SNSResource,
    settings: PipelineSettings,
    succeeded: bool,
    step_failures: Sequence[Any] = (),
    run_failure_message: str | None = None,
) -> str | None:
    """Publish the run's one notification; returns the SNS message id (None if already sent)."""
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    if run.tags.get(NOTIFICATION_TAG) == "sent":
        # A replayed tick (daemon killed after publishing): never email twice.
        context.log.info(f"notification for run {run.run_id} already sent; skipping")
        return None
    report = build_report(
        context.instance, run, succeeded, step_failures, run_failure_message, TABLE_NAME
    )
    subject = settings.naming.subject("Success" if succeeded else "Failure")
    try:
        message_id = sns.publish(subject, build_body(report))
    except NotificationError as err:
        _record_notification_failure(context, run, err)
        raise
    context.instance.add_run_tags(
        run.run_id, {NOTIFICATION_TAG: "sent", NOTIFICATION_ID_TAG: message_id}
    )
    context.log.info(f"sent {subject!r} for run {run.run_id} (SNS message {message_id})")
    return message_id


# What the three notification sensors share. No monitored_jobs: every run of this code
# location, i.e. stock_pipeline_job and the runs the UI makes when assets are materialised from
# the graph ("Materialize all", one asset). On by default: a fresh deployment emails at once.
_NOTIFICATION_SENSOR: dict[str, Any] = {
    "minimum_interval_seconds": sensor_interval_seconds(),
    "default_status": DefaultSensorStatus.RUNNING,
}


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    name="sns_on_pipeline_success",
    **_NOTIFICATION_SENSOR,
    description="Emails `{First}_{Surname}_Pipeline_Success` through SNS for every successful "
    "pipeline run (stock_pipeline_job or assets materialised from the UI), whatever launched it.",
)
def sns_on_pipeline_success(
    context: RunStatusSensorContext, sns: SNSResource, settings: PipelineSettings
) -> None:
    notify(context, sns, settings, succeeded=True)


@run_failure_sensor(
    name="sns_on_pipeline_failure",
    **_NOTIFICATION_SENSOR,
    description="Emails `{First}_{Surname}_Pipeline_Failure` through SNS for every failed "
    "pipeline run (stock_pipeline_job or assets materialised from the UI), with the failing step "
    "and its error.",
)
def sns_on_pipeline_failure(
    context: RunFailureSensorContext, sns: SNSResource, settings: PipelineSettings
) -> None:
    notify(
        context,
        sns,
        settings,
        succeeded=False,
        step_failures=context.get_step_failure_events(),
        run_failure_message=context.failure_event.message,
    )


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    name="sns_on_pipeline_canceled",
    **_NOTIFICATION_SENSOR,
    description="Emails `{First}_{Surname}_Pipeline_Failure` through SNS for every canceled "
    "pipeline run (terminated from the UI or the API): it did not succeed, and every run ends "
    "with an email.",
)
def sns_on_pipeline_canceled(
    context: RunStatusSensorContext, sns: SNSResource, settings: PipelineSettings
) -> None:
    notify(
        context,
        sns,
        settings,
        succeeded=False,
        run_failure_message="the run was canceled before it finished",
    )
