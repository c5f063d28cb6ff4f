"""The assets, thin wiring over `stock_assets.pipeline.run`: raw_stock_files (observed);
top_companies → historical_stock_data_csv → historical_stocks_data → historical_stocks (the
view), one multi-asset step that can also make any of them alone, each reading its inputs from S3
(no I/O manager); and the Parquet copy downstream of the CSV."""

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AutomationCondition,
    DataVersion,
    Failure,
    MaterializeResult,
    ObserveResult,
    asset,
    multi_asset,
    observable_source_asset,
)

from stock_assets.checks import CSV_CHECKS, TABLE_CHECKS, TOP_COMPANIES_CHECKS, check_result
from stock_assets.metadata import (
    CSV,
    CSV_SPEC,
    GROUP,
    PARQUET,
    RAW_STOCK_FILES,
    TABLE,
    TABLE_SPEC,
    TOP_COMPANIES,
    TOP_COMPANIES_SPEC,
    VIEW,
    VIEW_SPEC,
    csv_metadata,
    filter_metadata,
    parquet_metadata,
    stocks_observation,
    table_metadata,
    view_metadata,
)
from stock_assets.notifications import describe_trigger
from stock_assets.pipeline.companies import CompanyFilter
from stock_assets.pipeline.ledger import create_view
from stock_assets.pipeline.output import content_fingerprint
from stock_assets.pipeline.parquet import write_parquet_copy
from stock_assets.pipeline.run import (
    CsvObjectError,
    CsvOutcome,
    FilterError,
    RunConfig,
    TableOutcome,
    load_table_from_object,
    read_filter,
    run_pipeline,
)
from stock_assets.pipeline.s3 import list_objects
from stock_assets.pipeline.verdicts import Verdict, filter_file_valid
from stock_assets.resources import PipelineSettings, PostgresResource, StockS3Resource
from stock_assets.settings import STOCKS_PREFIX


@observable_source_asset(
    key=RAW_STOCK_FILES,
    group_name=GROUP,
    description="Raw per-company CSVs under `Stocks/` in the source bucket. Not produced by "
    "Dagster: observed (count, bytes, a listing fingerprint) by the `.SUCCESS` sensor when it "
    "launches a run, or from the UI. Runs read only the files the filter names.",
)
def raw_stock_files(s3: StockS3Resource, settings: PipelineSettings) -> ObserveResult:
    bucket = settings.naming.source_bucket
    metadata = stocks_observation(list_objects(s3.get_client(), bucket, STOCKS_PREFIX), bucket)
    return ObserveResult(
        data_version=DataVersion(metadata["listing_fingerprint"]),
        metadata=metadata,
    )


@multi_asset(
    name="historical_stock_data",
    specs=[TOP_COMPANIES_SPEC, CSV_SPEC, TABLE_SPEC, VIEW_SPEC],
    check_specs=[*TOP_COMPANIES_CHECKS, *CSV_CHECKS, *TABLE_CHECKS],
    can_subset=True,
)
def historical_stock_data(
    context: AssetExecutionContext,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The filter, the output CSV and the table, one step when all are materialised: the filter
    is read once, so top_companies records exactly what the CSV was made from; the table is
    loaded while the CSV is made and commits only after the CSV passed its checks and was
    uploaded. Alone: the filter parsed; the CSV made and uploaded; the table loaded from the CSV
    object in S3."""
    trigger = describe_trigger(context.run.tags)
    config = settings.run_config(context.run_id, postgres.table, s3.verify, trigger)
    client, selected, table = s3.get_client(), context.selected_asset_keys, None
    try:
        if CSV in selected:
            result = run_pipeline(config, client, postgres.connect if TABLE in selected else None)
            company_filter = result.company_filter
        elif TOP_COMPANIES in selected:
            company_filter = read_filter(client, config.bucket, config.max_files)
    except FilterError as err:
        if TOP_COMPANIES in selected:
            yield filter_failed(err)
        raise Failure(str(err)) from err
    if TOP_COMPANIES in selected:
        yield filter_result(company_filter, config)
    if CSV in selected:
        yield from csv_events(context, result.csv, config.bucket)
        table = result.table
    elif TABLE in selected:
        try:
            table = load_table_from_object(config, client, postgres.connect)
        except CsvObjectError as err:
            raise Failure(str(err)) from err
    if table is not None:
        yield from table_events(context, table, postgres, config.bucket)
    elif VIEW in selected:  # without the table: (re)created over the table as it is
        with postgres.connect() as conn:
            create_view(conn, postgres.table)
    if VIEW in selected:
        yield MaterializeResult(asset_key=VIEW, metadata=view_metadata(table, postgres.table))


def filter_result(company_filter: CompanyFilter, config: RunConfig) -> MaterializeResult:
    return MaterializeResult(
        asset_key=TOP_COMPANIES,
        metadata=filter_metadata(company_filter, config.bucket),
        data_version=DataVersion(content_fingerprint("\n".join(company_filter.files).encode())),
        check_results=[
            check_result(TOP_COMPANIES, filter_file_valid(company_filter, config.max_files))
        ],
    )


def filter_failed(err: FilterError) -> AssetCheckResult:
    """The failed `filter_file_valid` check of a run whose filter file is missing or unusable."""
    return check_result(TOP_COMPANIES, Verdict("filter_file_valid", False, {"problem": str(err)}))


def csv_events(context: AssetExecutionContext, csv: CsvOutcome, bucket: str):
    checks = [check_result(CSV, v) for v in csv.verdicts]
    if csv.blocking:
        yield from checks
        names = ", ".join(v.name for v in csv.blocking)
        problems = "; ".join(v.problem for v in csv.blocking if v.problem)
        raise Failure(
            f"blocking checks failed ({names}): {problems or 'see the checks'}. "
            "Output/historical_stock_data.csv was not replaced and the table is untouched. "
            f"Rejects: {csv.rejects or 'none'}"
        )
    if csv.reads_retried:
        # Harmless for the data (get_object re-read them), but many point at a setting the
        # presigned path lacks (a proxy, a CA bundle) and cost a second request each.
        context.log.warning(f"{csv.reads_retried} GETs were read again with get_object")
    assert csv.csv is not None
    yield MaterializeResult(
        asset_key=CSV,
        data_version=DataVersion(csv.csv.fingerprint),
        check_results=checks,
        metadata=csv_metadata(csv, bucket),
    )


def table_events(
    context: AssetExecutionContext, table: TableOutcome, postgres: PostgresResource, bucket: str
):
    checks = [check_result(TABLE, v) for v in table.verdicts]
    if table.loaded is None:
        yield from checks
        if checks:  # a check failed inside the transaction
            raise Failure(str(table.error)) from table.error
        raise table.error or RuntimeError("the table was not loaded")
    if table.preview_error:
        context.log.warning(table.preview_error)
    loaded = table.loaded
    context.log.info(
        f"loaded {loaded.rows_loaded} rows into {loaded.table} in {loaded.seconds:.1f}s"
    )
    yield MaterializeResult(
        asset_key=TABLE,
        data_version=DataVersion(table.fingerprint),
        check_results=checks,
        metadata=table_metadata(table, bucket, postgres.display_url),
    )


@asset(
    key=PARQUET,
    deps=[CSV],
    group_name=GROUP,  # in the lineage with the rest; stock_pipeline_job leaves it out
    kinds={"s3", "parquet"},
    # Refreshed by Dagster's automation (sensors.parquet_automation) after each new CSV.
    automation_condition=AutomationCondition.eager(),
    description="`Output/historical_stock_data.parquet`: the output CSV as typed, zstd Parquet "
    "for data scientists (same rows, same order; row-group statistics and a company_name Bloom "
    "filter let readers skip what they do not need).",
)
def historical_stock_data_parquet(s3: StockS3Resource, settings: PipelineSettings):
    try:
        copy = write_parquet_copy(s3.get_client(), settings.naming.source_bucket)
    except CsvObjectError as err:
        raise Failure(str(err)) from err
    return MaterializeResult(
        data_version=DataVersion(copy.csv_fingerprint or copy.csv_version),
        metadata=parquet_metadata(copy),
    )
