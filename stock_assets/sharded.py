"""`stock_pipeline_sharded_job` (issue 18): the pipeline as N shard steps (N: the `settings`
resource's `shards`, per run) and a final step, each in its own process; wiring over
`pipeline/shards.py` and `pipeline/shard_merge.py`. Only small results (names, each shard's
counts and rejects) go through the IO manager; the rows go through S3 and staging tables."""

from datetime import UTC, datetime

from dagster import (
    AssetCheckEvaluation,
    AssetMaterialization,
    DagsterRunStatus,
    DynamicOut,
    DynamicOutput,
    Failure,
    MaterializeResult,
    OpExecutionContext,
    Out,
    Output,
    RunsFilter,
    job,
    multiprocess_executor,
    op,
)

from stock_assets.assets import csv_events, filter_failed, filter_result, table_events
from stock_assets.checks import check_result
from stock_assets.metadata import CSV, VIEW, data_version_tags, view_metadata
from stock_assets.notifications import describe_trigger
from stock_assets.pipeline.run import FilterError, RunConfig, read_filter
from stock_assets.pipeline.shard_merge import finish_sharded
from stock_assets.pipeline.shards import ShardFailed, ShardResult, clean_up, run_shard
from stock_assets.resources import PipelineSettings, PostgresResource, StockS3Resource

SHARDED_JOB = "stock_pipeline_sharded_job"
RESUME_REFUSED = "its shards' data went with it. Re-execute all steps instead; nothing changed."
ENDED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def _config(context: OpExecutionContext, settings, postgres, s3) -> RunConfig:
    trigger = describe_trigger(context.run.tags)
    return settings.run_config(context.run_id, postgres.table, s3.verify, trigger)


def _refuse_resume(context: OpExecutionContext) -> None:
    """Resuming would reuse a failed parent's shard results, whose scratch it removed."""
    run = context.run
    if run.parent_run_id and "sharded_plan" not in (run.step_keys_to_execute or ["sharded_plan"]):
        raise Failure(f"{SHARDED_JOB} cannot resume {run.parent_run_id}: {RESUME_REFUSED}")


def _op_events(events):
    """An asset step's events (`assets.csv_events`, `table_events`) as an op's."""
    for event in events:
        checks = [event]
        if isinstance(event, MaterializeResult):
            tags = data_version_tags(event.data_version)
            yield AssetMaterialization(event.asset_key, metadata=event.metadata, tags=tags)
            checks = event.check_results or []
        for c in checks:
            yield AssetCheckEvaluation(
                c.asset_key, c.check_name, c.passed, c.metadata, severity=c.severity,
                description=c.description,
            )  # fmt: skip


@op(out={"plan": Out(), "shards": DynamicOut()})
def sharded_plan(
    context: OpExecutionContext,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The filter, read once for every step; a crashed run's leftovers removed; N outputs."""
    client, config = s3.get_client(), _config(context, settings, postgres, s3)
    try:  # read and recorded with the same bucket and limit, as the asset step does
        company_filter = read_filter(client, config.bucket, config.max_files)
    except FilterError as err:  # shown on top_companies, as the asset step shows it
        yield from _op_events([filter_failed(err)])
        raise Failure(str(err)) from err
    # Leftovers of crashed runs go; those of sharded runs still going (this one included) stay.
    unfinished = [status for status in DagsterRunStatus if status not in ENDED]
    going = context.instance.get_run_ids(RunsFilter(job_name=SHARDED_JOB, statuses=unfinished))
    keep = {context.run_id, *going}
    clean_up(client, config.bucket, postgres.connect, postgres.table, None, keep=keep)
    yield from _op_events([filter_result(company_filter, config)])
    yield Output((datetime.now(UTC), company_filter.files), "plan")
    for index in range(settings.shards):
        yield DynamicOutput((index, settings.shards), mapping_key=str(index), output_name="shards")


@op
def sharded_part(
    context: OpExecutionContext,
    plan,
    shard,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
) -> ShardResult:
    """One shard: its files → a CSV part in S3 and a staging table (see `run_shard`)."""
    _refuse_resume(context)
    (_, names), (index, count) = plan, shard
    config = _config(context, settings, postgres, s3)
    result = run_shard(config, s3.get_client(), postgres.connect, names, count, index)
    if result.error:  # the final step fails the run, after removing every shard's scratch
        context.log.error(f"shard {index} of {count} failed: {result.error}")
    return result


@op(out={})
def sharded_finish(
    context: OpExecutionContext,
    plan,
    shards: list,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The verdicts over all shards, the CSV in filter order, the table in one transaction."""
    _refuse_resume(context)
    started_at, names = plan
    config = _config(context, settings, postgres, s3)
    try:
        outcome = finish_sharded(
            config, s3.get_client(), postgres.connect, names, shards, started_at, context.log
        )
    except ShardFailed as err:
        raise Failure(str(err)) from err
    if outcome.published or outcome.csv.blocking:
        yield from _op_events(csv_events(context, outcome.csv, config.bucket))
    else:  # the table failed before the CSV was published: its checks, not a materialisation
        yield from _op_events(check_result(CSV, v) for v in outcome.csv.verdicts)
    assert outcome.table is not None
    yield from _op_events(table_events(context, outcome.table, postgres, config.bucket))
    yield AssetMaterialization(VIEW, metadata=view_metadata(outcome.table, postgres.table))


@job(
    name=SHARDED_JOB,
    executor_def=multiprocess_executor,
    description="The same pipeline, sharded by company over settings.shards steps (each in "
    "its own process), then one step that assembles the CSV in filter order and swaps the "
    "table in, all or nothing.",
)
def stock_pipeline_sharded_job():
    plan, shards = sharded_plan()
    sharded_finish(plan, shards.map(lambda shard: sharded_part(plan, shard)).collect())
