"""The four assets, thin wiring over `stock_assets.pipeline.run`: raw_stock_files + top_companies
→ historical_stock_data_csv → historical_stocks_data (the last two one multi-asset step that
can also make either alone). Each reads its inputs from S3 (no I/O manager), so any of them can
be (re)materialised alone from the UI."""

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    DataVersion,
    Failure,
    MaterializeResult,
    ObserveResult,
    asset,
    multi_asset,
    observable_source_asset,
)

from stock_assets.checks import (
    CSV_CHECKS,
    TABLE_CHECKS,
    TABLE_FRESHNESS,
    TOP_COMPANIES_CHECKS,
    check_result,
)
from stock_assets.metadata import (
    CSV,
    GROUP,
    RAW_STOCK_FILES,
    TABLE,
    TOP_COMPANIES,
    csv_metadata,
    filter_metadata,
    stocks_observation,
    table_metadata,
)
from stock_assets.pipeline.output import content_fingerprint
from stock_assets.pipeline.run import (
    CsvObjectError,
    CsvOutcome,
    FilterError,
    TableOutcome,
    load_table_from_object,
    read_filter,
    run_pipeline,
)
from stock_assets.pipeline.s3 import list_objects, listing_fingerprint
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
    objects = list_objects(s3.get_client(), bucket, STOCKS_PREFIX)
    return ObserveResult(
        data_version=DataVersion(listing_fingerprint(objects)),
        metadata=stocks_observation(objects, bucket),
    )


@asset(
    key=TOP_COMPANIES,
    group_name=GROUP,
    kinds={"s3"},
    check_specs=TOP_COMPANIES_CHECKS,
    description="`CompanyNames/top_companies.txt`, parsed and validated into the ordered list "
    "of files to process.",
)
def top_companies(s3: StockS3Resource, settings: PipelineSettings):
    bucket = settings.naming.source_bucket
    try:
        company_filter = read_filter(s3.get_client(), bucket, settings.max_files)
    except FilterError as err:
        yield check_result(
            TOP_COMPANIES, Verdict("filter_file_valid", False, {"problem": str(err)})
        )
        raise Failure(str(err)) from err
    yield MaterializeResult(
        metadata=filter_metadata(company_filter, bucket),
        data_version=DataVersion(content_fingerprint("\n".join(company_filter.files).encode())),
        check_results=[
            check_result(TOP_COMPANIES, filter_file_valid(company_filter, settings.max_files))
        ],
    )


@multi_asset(
    name="historical_stock_data",
    specs=[
        AssetSpec(
            CSV,
            deps=[RAW_STOCK_FILES, TOP_COMPANIES],
            group_name=GROUP,
            kinds={"s3", "csv"},
            description="`Output/historical_stock_data.csv`: the listed companies' rows in "
            "filter order, with daily_percent_change and value_change; no header.",
        ),
        AssetSpec(
            TABLE,
            deps=[CSV],
            group_name=GROUP,
            kinds={"postgres"},
            freshness_policy=TABLE_FRESHNESS,
            description="PostgreSQL table `historical_stocks_data` (9 × VARCHAR(56)), made equal "
            "to the output CSV by `insert_query.sql` in one transaction.",
        ),
    ],
    check_specs=[*CSV_CHECKS, *TABLE_CHECKS],
    can_subset=True,
)
def historical_stock_data(
    context: AssetExecutionContext,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The output CSV and the table, one step when both are materialised: the table is loaded
    while the CSV is made and commits only after the CSV passed its checks and was uploaded.
    The CSV alone: made and uploaded. The table alone: loaded from the CSV object in S3."""
    config = settings.run_config(context.run_id, postgres.table, s3.verify)
    client = s3.get_client()
    if CSV not in context.selected_asset_keys:
        try:
            table = load_table_from_object(config, client, postgres.connect)
        except CsvObjectError as err:
            raise Failure(str(err)) from err
        yield from _table_events(context, table, postgres, config.bucket)
        return
    connect = postgres.connect if TABLE in context.selected_asset_keys else None
    try:
        result = run_pipeline(config, client, connect)
    except FilterError as err:
        raise Failure(str(err)) from err
    yield from _csv_events(context, result.csv, config.bucket)
    if result.table is not None:
        yield from _table_events(context, result.table, postgres, config.bucket)


def _csv_events(context: AssetExecutionContext, csv: CsvOutcome, bucket: str):
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


def _table_events(
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
