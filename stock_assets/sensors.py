"""Event-driven runs and their emails: `success_marker_sensor` starts stock_pipeline_job for each
new `.SUCCESS` object in the monitored bucket; the three run-status sensors end every pipeline
run, however launched, with one SNS email (`stock_assets.run_report.publish_run_outcome`). Which
markers are new and how they group into runs is `stock_assets.markers`."""

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from dagster import (
    AssetObservation,
    AutomationConditionSensorDefinition,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster_aws.s3 import S3Resource

from stock_assets.jobs import stock_pipeline_job
from stock_assets.markers import (
    MARKER_RUN_TAG,
    MARKER_SUFFIX,
    Marker,
    chunk_run_key,
    chunk_tags,
    list_markers,
    marker_chunks,
    parse_cursor,
)
from stock_assets.metadata import PARQUET, RAW_STOCK_FILES, stocks_observation
from stock_assets.notifications import CANCELED_REASON, sensor_interval_seconds, shorten_key
from stock_assets.pipeline.s3 import list_objects
from stock_assets.resources import PipelineSettings, SNSResource
from stock_assets.run_report import publish_run_outcome, redeliver_lost_emails
from stock_assets.settings import STOCKS_PREFIX

# Dagster's tag for an observation's data version (what ObserveResult(data_version=…) writes).
DATA_VERSION_TAG = "dagster/data_version"


def marker_run_requests(bucket: str, markers: Sequence[Marker]) -> list[RunRequest]:
    return [
        # Dagster launches a run key once per sensor: a second guard behind the cursor (e.g. a
        # tick interrupted after launching but before saving its cursor).
        RunRequest(run_key=chunk_run_key(chunk), tags=chunk_tags(bucket, chunk))
        for chunk in marker_chunks(markers)
    ]


@sensor(
    job=stock_pipeline_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts stock_pipeline_job when a `.SUCCESS` object appears (or is written again) "
    "anywhere in the monitored bucket. The new markers found in one tick share one run (more "
    "only past a run's tag budget of 100 keys) and are all listed in its tags. While a run it "
    "launched is still queued, new markers wait for it to start.",
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
    fresh = seen.new(markers)
    cursor = seen.after(markers).dump()
    if not fresh:
        return SensorResult(
            skip_reason=f"no new {MARKER_SUFFIX} marker in s3://{bucket} "
            f"({len(markers)} marker(s) present, all acted on already)",
            cursor=cursor,
        )
    # A queued run has read nothing yet: it will see what these markers announce. They wait for
    # it to start, so a stream of markers queues one batch at a time, not a run per tick.
    queued = RunsFilter(
        job_name=stock_pipeline_job.name, statuses=[DagsterRunStatus.QUEUED], tags=MARKER_RUN_TAG
    )
    if waiting := context.instance.get_run_records(queued, limit=1):
        return SensorResult(
            skip_reason=f"{len(fresh)} new marker(s) wait for run "
            f"{waiting[0].dagster_run.run_id} (queued) to start",
            cursor=seen.held(markers).dump(),
        )
    context.log.info(
        f"{len(fresh)} new marker(s) in s3://{bucket}: "
        + ", ".join(shorten_key(m.key) for m in fresh[:20])
    )
    return SensorResult(
        run_requests=marker_run_requests(bucket, fresh),
        asset_events=_observe_stocks(context, client, settings.naming.source_bucket),
        cursor=cursor,
    )


def _observe_stocks(
    context: SensorEvaluationContext, client: Any, bucket: str
) -> list[AssetObservation]:
    """raw_stock_files as the run about to start will find it. Recorded here, not in the run:
    the run reads only the files the filter names and never lists the 7,000-odd keys."""
    try:
        objects = list_objects(client, bucket, STOCKS_PREFIX)
    except (BotoCoreError, ClientError) as error:  # only an observation: the runs still start
        context.log.warning(f"nothing observed: listing s3://{bucket}/{STOCKS_PREFIX}: {error}")
        return []
    metadata = stocks_observation(objects, bucket)
    return [
        AssetObservation(
            asset_key=RAW_STOCK_FILES,
            metadata=metadata,
            tags={DATA_VERSION_TAG: metadata["listing_fingerprint"]},
        )
    ]


def _notify(
    context: RunStatusSensorContext,
    sns: SNSResource,
    settings: PipelineSettings,
    succeeded: bool,
    run_failure_message: str | None = None,
) -> None:
    publish_run_outcome(
        context.instance,
        context.dagster_run,
        sns,
        settings.naming,
        succeeded=succeeded,
        run_failure_message=run_failure_message,
        log=context.log,
    )


# What the three notification sensors share. Every code location: runs made without one
# (`dagster job execute`, `dagster asset materialize`) are emailed too; `is_pipeline_run` keeps
# the pipeline's. On by default: a fresh deployment emails at once.
_NOTIFICATION_SENSOR: dict[str, Any] = {
    "minimum_interval_seconds": sensor_interval_seconds(),
    "default_status": DefaultSensorStatus.RUNNING,
    "monitor_all_code_locations": True,
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
    _notify(context, sns, settings, succeeded=True)


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
    # The run's own failure message is generic; the report takes the steps' errors from the log.
    _notify(context, sns, settings, False, run_failure_message=context.failure_event.message)


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
    _notify(context, sns, settings, False, CANCELED_REASON)


@sensor(
    minimum_interval_seconds=max(60, sensor_interval_seconds()),
    default_status=DefaultSensorStatus.RUNNING,
    description="Sends again the emails SNS refused at the end of a run (runs tagged "
    "`stock_assets/notification=failed` that ended in the last day), once SNS answers.",
)
def sns_redelivery(context: SensorEvaluationContext, sns: SNSResource, settings: PipelineSettings):
    sent = redeliver_lost_emails(context.instance, sns, settings.naming, context.log)
    return SkipReason(f"sent again for runs {', '.join(sent)}" if sent else "no lost email")


# Dagster's implicit default_automation_condition_sensor starts STOPPED: this one is on by
# default, so a fresh deployment keeps the Parquet copy fresh without a click in the UI.
parquet_automation = AutomationConditionSensorDefinition(
    "parquet_automation",
    target=[PARQUET],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description="Evaluates historical_stock_data_parquet's automation condition (eager): a run "
    "refreshes it after each new historical_stock_data_csv. Its runs send no email.",
)
