"""The four assets: thin Dagster wiring over `stock_assets.pipeline`.

Lineage: raw_stock_files + top_companies → historical_stock_data_csv → historical_stocks_data.
Nothing is handed from asset to asset through an I/O manager: each one reads its inputs from
S3, so any of them can be (re)materialised alone from the UI.
"""

import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    TableColumn,
    TableSchema,
    asset,
    observable_source_asset,
)
from dagster_aws.s3 import S3Resource

from stock_assets.pipeline.companies import CompanyFilter, FilterFileError, parse_company_filter
from stock_assets.pipeline.load import check_row_count, load_csv, preview_rows
from stock_assets.pipeline.output import (
    content_fingerprint,
    output_csv_bytes,
    rejected_rows_csv,
    skipped_files_csv,
)
from stock_assets.pipeline.s3 import (
    S3Object,
    list_objects,
    listing_fingerprint,
    map_objects,
    read_object,
    s3_uri,
)
from stock_assets.pipeline.transform import OUTPUT_COLUMNS, FileResult, combine, transform_file
from stock_assets.resources import PipelineSettings, PostgresResource
from stock_assets.settings import (
    FILTER_KEY,
    OUTPUT_KEY,
    REJECTED_PREFIX,
    STOCKS_PREFIX,
)

GROUP = "stock_market"
TABLE_SCHEMA = TableSchema(columns=[TableColumn(name, "varchar(56)") for name in OUTPUT_COLUMNS])
# Object metadata on the output CSV, so the table asset knows what to expect when run alone.
ROWS_META = "row-count"
FINGERPRINT_META = "content-fingerprint"
RUN_META = "dagster-run-id"


class InputLimitExceeded(Failure):
    """The run would read more, or larger, files than allowed; refused before any work."""


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@observable_source_asset(
    name="raw_stock_files",
    group_name=GROUP,
    description="Raw per-company CSVs under `Stocks/` in the source bucket. Not produced by "
    "Dagster: each observation records what is there (count, bytes, a listing fingerprint).",
)
def raw_stock_files(s3: S3Resource, settings: PipelineSettings) -> ObserveResult:
    bucket = settings.naming.source_bucket
    objects = list_objects(s3.get_client(), bucket, STOCKS_PREFIX)
    fingerprint = listing_fingerprint(objects)
    largest = max(objects, key=lambda o: o.size, default=None)
    return ObserveResult(
        data_version=DataVersion(fingerprint),
        metadata={
            "files": len(objects),
            "total_bytes": MetadataValue.int(sum(o.size for o in objects)),
            "empty_files": sum(1 for o in objects if o.size == 0),
            "largest_file": f"{largest.name} ({largest.size} bytes)" if largest else "none",
            "listing_fingerprint": fingerprint,
            "location": MetadataValue.url(s3_uri(bucket, STOCKS_PREFIX)),
        },
    )


def _load_filter(client: Any, bucket: str, max_files: int) -> CompanyFilter:
    try:
        data = read_object(client, bucket, FILTER_KEY)
    except client.exceptions.NoSuchKey as err:
        raise Failure(
            f"filter file {s3_uri(bucket, FILTER_KEY)} does not exist",
            metadata={"bucket": bucket, "key": FILTER_KEY},
        ) from err
    try:
        return parse_company_filter(data, max_entries=max_files)
    except FilterFileError as err:
        raise Failure(f"filter file {s3_uri(bucket, FILTER_KEY)} is unusable: {err}") from err


@asset(
    group_name=GROUP,
    kinds={"s3"},
    description="`CompanyNames/top_companies.txt`, parsed and validated into the ordered list "
    "of files to process.",
)
def top_companies(
    context: AssetExecutionContext, s3: S3Resource, settings: PipelineSettings
) -> MaterializeResult:
    client = s3.get_client()
    bucket = settings.naming.source_bucket
    company_filter = _load_filter(client, bucket, settings.max_files)
    present = {o.name for o in list_objects(client, bucket, STOCKS_PREFIX)}
    missing = [f for f in company_filter.files if f not in present]
    if missing:
        context.log.warning(f"{len(missing)} filter entries have no file under Stocks/")
    return MaterializeResult(
        metadata={
            "entries": company_filter.entries,
            "files_selected": len(company_filter.files),
            "duplicates_dropped": len(company_filter.duplicates),
            "invalid_entries": len(company_filter.invalid),
            "names_without_file": len(missing),
            "names_without_file_examples": ", ".join(missing[:20]) or "none",
            "first_files": ", ".join(company_filter.files[:10]),
            "location": MetadataValue.url(s3_uri(bucket, FILTER_KEY)),
        },
        data_version=DataVersion(content_fingerprint("\n".join(company_filter.files).encode())),
    )


def _check_input_limits(selected: list[S3Object], settings: PipelineSettings) -> None:
    if len(selected) > settings.max_files:
        raise InputLimitExceeded(
            f"{len(selected)} files selected; the limit is {settings.max_files} per run"
        )
    too_big = [o for o in selected if o.size > settings.max_file_bytes]
    if too_big:
        listed = ", ".join(f"{o.name} ({o.size} bytes)" for o in too_big[:10])
        raise InputLimitExceeded(
            f"{len(too_big)} selected files exceed the {settings.max_file_bytes}-byte limit: "
            f"{listed}. Nothing was read. Raise max_file_bytes if these files are expected.",
            metadata={"oversized_files": MetadataValue.json([o.name for o in too_big])},
        )


def _write_rejects(
    client: Any, bucket: str, run_id: str, skipped: list[FileResult], combined: Any
) -> dict[str, str]:
    """Keep every rejected row and skipped file, with its reason, under Output/rejected/<run>/."""
    prefix = f"{REJECTED_PREFIX}{run_id}/"
    written = {}
    if combined.rows_rejected:
        key = prefix + "rejected_rows.csv"
        client.put_object(Bucket=bucket, Key=key, Body=rejected_rows_csv(combined.rejected_rows))
        written["rejected_rows"] = s3_uri(bucket, key)
    if skipped:
        key = prefix + "skipped_files.csv"
        client.put_object(Bucket=bucket, Key=key, Body=skipped_files_csv(skipped))
        written["skipped_files"] = s3_uri(bucket, key)
    return written


@asset(
    deps=[raw_stock_files, top_companies],
    group_name=GROUP,
    kinds={"s3", "csv"},
    description="`Output/historical_stock_data.csv`: the listed companies' rows in filter "
    "order, with daily_percent_change and value_change; no header.",
)
def historical_stock_data_csv(
    context: AssetExecutionContext, s3: S3Resource, settings: PipelineSettings
) -> MaterializeResult:
    started = time.perf_counter()
    client = s3.get_client()
    bucket = settings.naming.source_bucket
    company_filter = _load_filter(client, bucket, settings.max_files)
    listing = {o.name: o for o in list_objects(client, bucket, STOCKS_PREFIX)}
    selected = [listing[f] for f in company_filter.files if f in listing]
    _check_input_limits(selected, settings)

    missing = [
        FileResult(f, 0, skip_reason="listed in the filter but not found under Stocks/")
        for f in company_filter.files
        if f not in listing
    ]
    read_started = time.perf_counter()
    results = list(
        map_objects(
            client,
            bucket,
            [o.key for o in selected],
            lambda key, body: transform_file(key.rsplit("/", 1)[-1], body),
            max_workers=settings.read_concurrency,
        )
    )
    read_seconds = time.perf_counter() - read_started
    combined = combine(results)
    body = output_csv_bytes(combined.table)
    rows = combined.table.num_rows
    # Reconciliation is structural, but asserted here so a bug can never pass silently.
    if combined.rows_read != rows + combined.rows_rejected:
        raise Failure(
            f"row counts do not reconcile: read {combined.rows_read}, written {rows}, "
            f"rejected {combined.rows_rejected}"
        )
    skipped = missing + combined.skipped_files
    reject_uris = _write_rejects(client, bucket, context.run_id, skipped, combined)
    fingerprint = content_fingerprint(body)
    client.put_object(
        Bucket=bucket,
        Key=OUTPUT_KEY,
        Body=body,
        ContentType="text/csv",
        Metadata={ROWS_META: str(rows), FINGERPRINT_META: fingerprint, RUN_META: context.run_id},
    )
    companies = len({f.company for f in results if f.rows_written})
    preview = combined.table.slice(0, 5).to_pylist()
    return MaterializeResult(
        data_version=DataVersion(fingerprint),
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": TABLE_SCHEMA,
            "rows_read": combined.rows_read,
            "rows_rejected": combined.rows_rejected,
            "open_zero_rows": sum(f.open_zero_rows for f in results),
            "files_selected": len(company_filter.files),
            "files_read": len(results),
            "files_skipped": len(skipped),
            "skipped_files": MetadataValue.md(
                _markdown_table(["file", "reason"], [[f.file_name, f.skip_reason] for f in skipped])
                if skipped
                else "none"
            ),
            "companies": companies,
            "bytes_read": sum(f.bytes_read for f in results),
            "bytes_written": len(body),
            "content_fingerprint": fingerprint,
            "read_transform_seconds": round(read_seconds, 3),
            "duration_seconds": round(time.perf_counter() - started, 3),
            "location": MetadataValue.url(s3_uri(bucket, OUTPUT_KEY)),
            "rejects": MetadataValue.json(reject_uris or {}),
            "preview": MetadataValue.md(
                _markdown_table(OUTPUT_COLUMNS, [list(r.values()) for r in preview])
            ),
        },
    )


@asset(
    deps=[historical_stock_data_csv],
    group_name=GROUP,
    kinds={"postgres"},
    description="PostgreSQL table `historical_stocks_data` (9 × VARCHAR(56)), made equal to the "
    "output CSV by `insert_query.sql` in one transaction.",
)
def historical_stocks_data(
    context: AssetExecutionContext,
    s3: S3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
) -> MaterializeResult:
    client = s3.get_client()
    bucket = settings.naming.source_bucket
    try:
        head = client.head_object(Bucket=bucket, Key=OUTPUT_KEY)
    except client.exceptions.ClientError as err:
        raise Failure(
            f"{s3_uri(bucket, OUTPUT_KEY)} is not there to load: materialise "
            "historical_stock_data_csv first"
        ) from err
    object_meta = head.get("Metadata", {})
    if ROWS_META not in object_meta:
        raise Failure(f"{s3_uri(bucket, OUTPUT_KEY)} was not written by this pipeline")
    expected_rows = int(object_meta[ROWS_META])
    body = client.get_object(Bucket=bucket, Key=OUTPUT_KEY, IfMatch=head["ETag"])["Body"]
    with postgres.connect() as conn:
        result = load_csv(conn, body, checks=[check_row_count(expected_rows)], table=postgres.table)
        preview = preview_rows(conn, 5, postgres.table)
    context.log.info(
        f"loaded {result.rows_loaded} rows into {postgres.table} in {result.seconds:.1f}s"
    )
    return MaterializeResult(
        data_version=DataVersion(object_meta.get(FINGERPRINT_META, head["ETag"].strip('"'))),
        metadata={
            "dagster/row_count": result.rows_loaded,
            "dagster/column_schema": TABLE_SCHEMA,
            "dagster/table_name": postgres.table,
            "rows_before": result.rows_before,
            "rows_expected_from_csv": expected_rows,
            "source_csv": MetadataValue.url(s3_uri(bucket, OUTPUT_KEY)),
            "source_run_id": object_meta.get(RUN_META, "unknown"),
            "database": postgres.display_url,
            "load_seconds": round(result.seconds, 3),
            "preview": MetadataValue.md(
                _markdown_table(OUTPUT_COLUMNS, [list(r) for r in preview])
            ),
            "checks": MetadataValue.json(result.checks),
        },
    )
