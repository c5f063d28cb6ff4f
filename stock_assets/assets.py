"""The four assets: thin Dagster wiring over `stock_assets.pipeline`.

Lineage: raw_stock_files + top_companies → historical_stock_data_csv → historical_stocks_data
(the last two made by one multi-asset step, `historical_stock_data`, which can also make either
alone).
Nothing is handed from asset to asset through an I/O manager: each one reads its inputs from
S3, so any of them can be (re)materialised alone from the UI.
"""

import contextlib
import time
from typing import Any

import psycopg2
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    TableColumn,
    TableSchema,
    asset,
    multi_asset,
    observable_source_asset,
)

from stock_assets.checks import (
    CSV,
    CSV_CHECKS,
    TABLE,
    TABLE_CHECKS,
    TABLE_FRESHNESS,
    TOP_COMPANIES,
    TOP_COMPANIES_CHECKS,
    finding_result,
    result,
)
from stock_assets.pipeline import quality
from stock_assets.pipeline.companies import CompanyFilter, FilterFileError, parse_company_filter
from stock_assets.pipeline.load import (
    LoadCheckFailed,
    LoadResult,
    PipelinedLoad,
    check_no_duplicate_keys,
    check_table_matches_csv,
    load_csv,
    preview_rows,
)
from stock_assets.pipeline.output import (
    CsvOutput,
    build_output,
    content_fingerprint,
    csv_lines,
    rejected_rows_csv,
    skipped_files_csv,
)
from stock_assets.pipeline.s3 import (
    ObjectReader,
    S3Object,
    files_directly_under,
    listing_fingerprint,
    map_objects,
    presigned_get_session,
    read_object,
    s3_uri,
)
from stock_assets.pipeline.transform import OUTPUT_COLUMNS, CombinedOutput, FileResult
from stock_assets.resources import PipelineSettings, PostgresResource, StockS3Resource
from stock_assets.settings import (
    FILTER_KEY,
    OUTPUT_KEY,
    REJECTED_PREFIX,
    STOCKS_PREFIX,
)

GROUP = "stock_market"
TABLE_SCHEMA = TableSchema(columns=[TableColumn(name, "varchar(56)") for name in OUTPUT_COLUMNS])
# Object metadata on the output CSV, so the table knows what to expect when loaded alone.
ROWS_META = "row-count"
FINGERPRINT_META = "content-fingerprint"
CRC32_META = "content-crc32"
DUPLICATES_META = "duplicate-keys"
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
def raw_stock_files(s3: StockS3Resource, settings: PipelineSettings) -> ObserveResult:
    bucket = settings.naming.source_bucket
    # The run's later steps reuse this listing (see `StockS3Resource.list_objects`).
    objects = s3.list_objects(bucket, STOCKS_PREFIX)
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
    check_specs=TOP_COMPANIES_CHECKS,
    description="`CompanyNames/top_companies.txt`, parsed and validated into the ordered list "
    "of files to process.",
)
def top_companies(context: AssetExecutionContext, s3: StockS3Resource, settings: PipelineSettings):
    client = s3.get_client()
    bucket = settings.naming.source_bucket
    try:
        company_filter = _load_filter(client, bucket, settings.max_files)
    except Failure as err:
        yield result(TOP_COMPANIES, "filter_file_valid", False, {"problem": err.description})
        raise
    present = files_directly_under(s3.list_objects(bucket, STOCKS_PREFIX), STOCKS_PREFIX)
    missing = [f for f in company_filter.files if f not in present]
    if missing:
        context.log.warning(f"{len(missing)} filter entries have no file under Stocks/")
    invalid = [f"{i.entry!r}: {i.reason}" for i in company_filter.invalid]
    filter_meta: dict[str, Any] = {
        "entries": company_filter.entries,
        "files_selected": len(company_filter.files),
        "max_files": settings.max_files,
        "duplicates_dropped": len(company_filter.duplicates),
        "invalid_entries": len(invalid),
        "invalid_examples": MetadataValue.json(invalid[:20]),
    }
    if invalid:  # also the failure's description (see `checks.result`)
        filter_meta["problem"] = (
            f"{len(invalid)} entries are not usable file names and were dropped: "
            + "; ".join(invalid[:5])
        )
    checks = [
        # Unusable entries are dropped, the rest is read: a warning, not a stop.
        result(TOP_COMPANIES, "filter_file_valid", not invalid, filter_meta, blocking=not invalid),
        finding_result(
            TOP_COMPANIES, "filter_names_have_files", quality.Finding(len(missing), missing[:10])
        ),
    ]
    yield MaterializeResult(
        metadata={
            "entries": company_filter.entries,
            "files_selected": len(company_filter.files),
            "duplicates_dropped": len(company_filter.duplicates),
            "invalid_entries": len(invalid),
            "names_without_file": len(missing),
            "names_without_file_examples": ", ".join(missing[:20]) or "none",
            "first_files": ", ".join(company_filter.files[:10]),
            "location": MetadataValue.url(s3_uri(bucket, FILTER_KEY)),
        },
        data_version=DataVersion(content_fingerprint("\n".join(company_filter.files).encode())),
        check_results=checks,
    )


def _input_limits(selected: list[S3Object], settings: PipelineSettings) -> AssetCheckResult:
    too_big = [o for o in selected if o.size > settings.max_file_bytes]
    metadata: dict[str, Any] = {
        "files": len(selected),
        "max_files": settings.max_files,
        "largest_bytes": max((o.size for o in selected), default=0),
        "max_file_bytes": settings.max_file_bytes,
    }
    if len(selected) > settings.max_files:
        metadata["problem"] = f"{len(selected)} files selected; the limit is {settings.max_files}"
    elif too_big:
        listed = ", ".join(f"{o.name} ({o.size} bytes)" for o in too_big[:10])
        metadata["problem"] = (
            f"{len(too_big)} selected files exceed the {settings.max_file_bytes}-byte limit: "
            f"{listed}. Nothing was read. Raise max_file_bytes if these files are expected."
        )
        metadata["oversized_files"] = MetadataValue.json([o.name for o in too_big])
    return result(CSV, "input_limits", "problem" not in metadata, metadata)


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


def _csv_checks(
    combined: CombinedOutput,
    profile: quality.OutputProfile,
    selected_files: int,
    skipped: list[FileResult],
    rejects: dict[str, str],
    settings: PipelineSettings,
) -> tuple[list[AssetCheckResult], int]:
    """Every check on the CSV, from the data in hand and the row-level findings gathered while
    it was written (`profile`); also returns the duplicate-key count."""
    table = combined.table
    rows, rejected = table.num_rows, combined.rows_rejected
    read_ok = sum(1 for f in combined.files if not f.skip_reason)
    duplicates = profile.duplicates(table)
    formats = profile.format_problems
    reject_share = rejected / combined.rows_read if combined.rows_read else 0.0
    by_reason = quality.rejects_by_reason(combined.rejected_rows)
    checks = [
        result(CSV, "files_reconcile", read_ok + len(skipped) == selected_files, {
            "files_selected": selected_files, "files_read": read_ok,
            "files_skipped": len(skipped),
        }),
        result(CSV, "rows_reconcile", combined.rows_read == rows + rejected, {
            "rows_read": combined.rows_read, "rows_written": rows, "rows_rejected": rejected,
        }),
        result(CSV, "no_duplicate_keys", not duplicates.found, {
            "duplicates": duplicates.count,
            "examples": MetadataValue.json(duplicates.examples),
            "duplicates_rejected_upstream": sum(
                n for reason, n in by_reason.items() if reason.startswith("duplicate")
            ),
        }),
        result(CSV, "formats_valid", not formats, {
            "rows_checked": rows,
            "problems": MetadataValue.json(
                {c: {"count": f.count, "examples": f.examples} for c, f in formats.items()}
            ),
            "rows_rejected_for_format_upstream": sum(
                n for reason, n in by_reason.items() if not reason.startswith("duplicate")
            ),
        }),
        AssetCheckResult(
            asset_key=CSV,
            check_name="rejected_rows",
            passed=rejected == 0,
            # A few bad rows are the source's normal state: warn. Many mean a broken input.
            severity=AssetCheckSeverity.ERROR
            if reject_share > settings.max_reject_fraction
            else AssetCheckSeverity.WARN,
            metadata={
                "count": rejected,
                "share_of_rows_read": round(reject_share, 6),
                "max_reject_fraction": settings.max_reject_fraction,
                "by_reason": MetadataValue.json(by_reason),
                "examples": MetadataValue.json(
                    [f"{r.file_name}:{r.line} {r.reason}" for r in combined.rejected_rows[:10]]
                ),
                "kept_at": rejects.get("rejected_rows", "none"),
            },
        ),
        finding_result(
            CSV, "skipped_files",
            quality.Finding(len(skipped), [f"{f.file_name}: {f.skip_reason}" for f in skipped]),
            kept_at=rejects.get("skipped_files", "none"),
        ),
        *(finding_result(CSV, name, found) for name, found in profile.findings.items()),
    ]  # fmt: skip
    return checks, duplicates.count


def _blocking_failures(checks: list[AssetCheckResult]) -> list[AssetCheckResult]:
    return [c for c in checks if not c.passed and c.severity == AssetCheckSeverity.ERROR]


CSV_SPEC = AssetSpec(
    CSV,
    deps=[raw_stock_files.key, TOP_COMPANIES],
    group_name=GROUP,
    kinds={"s3", "csv"},
    description="`Output/historical_stock_data.csv`: the listed companies' rows in filter "
    "order, with daily_percent_change and value_change; no header.",
)
TABLE_SPEC = AssetSpec(
    TABLE,
    deps=[CSV],
    group_name=GROUP,
    kinds={"postgres"},
    freshness_policy=TABLE_FRESHNESS,
    description="PostgreSQL table `historical_stocks_data` (9 × VARCHAR(56)), made equal to the "
    "output CSV by `insert_query.sql` in one transaction.",
)


@multi_asset(
    name="historical_stock_data",
    specs=[CSV_SPEC, TABLE_SPEC],
    check_specs=[*CSV_CHECKS, *TABLE_CHECKS],
    can_subset=True,
)
def historical_stock_data(
    context: AssetExecutionContext,
    s3: StockS3Resource,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The output CSV and the table, one step when both are materialised.

    Both: the table is loaded while the CSV is being made (COPY fed chunk by chunk), and its
    transaction commits only after the CSV passed its checks and was uploaded. The CSV alone:
    made and uploaded. The table alone: loaded from the CSV object in S3.
    """
    selected = context.selected_asset_keys
    if CSV in selected:
        yield from _make_csv(context, s3, settings, postgres if TABLE in selected else None)
    else:
        yield from _load_table_from_object(context, s3.get_client(), postgres, settings)


def _make_csv(
    context: AssetExecutionContext,
    s3: StockS3Resource,
    settings: PipelineSettings,
    postgres: PostgresResource | None,
):
    started = time.perf_counter()
    steps: dict[str, float] = {}
    client = s3.get_client()
    bucket = settings.naming.source_bucket
    company_filter = _load_filter(client, bucket, settings.max_files)
    listing = files_directly_under(s3.list_objects(bucket, STOCKS_PREFIX), STOCKS_PREFIX)
    selected = [listing[f] for f in company_filter.files if f in listing]
    limits = _input_limits(selected, settings)
    steps["list_seconds"] = time.perf_counter() - started
    if not limits.passed:
        yield limits
        raise InputLimitExceeded(limits.metadata["problem"].value)
    missing = [
        FileResult(f, 0, skip_reason="listed in the filter but not found under Stocks/")
        for f in company_filter.files
        if f not in listing
    ]

    table_load = PipelinedLoad(postgres.connect, postgres.table) if postgres is not None else None
    with (
        contextlib.closing(presigned_get_session(client, s3.verify)) as http,
        table_load or contextlib.nullcontext() as load,
    ):
        reader = ObjectReader(client, bucket, http)
        mark = time.perf_counter()
        # Downloads (a thread pool, in order), transformation in batches, CSV chunks, and the
        # COPY of those chunks into the table (another thread) all overlap.
        combined, csv_output, profile = build_output(
            (
                (key.rsplit("/", 1)[-1], body)
                for key, body in map_objects(
                    reader,
                    [o.key for o in selected],
                    lambda key, body: (key, body),
                    max_workers=settings.read_concurrency,
                )
            ),
            [o.name for o in selected],
            forward=load.write if load is not None else None,
        )
        steps["read_transform_seconds"] = time.perf_counter() - mark
        if reader.fallbacks:
            # Harmless for the data (get_object re-read them), but many point at a setting the
            # presigned path lacks (a proxy, a CA bundle) and cost a second request each.
            context.log.warning(
                f"{reader.fallbacks} of {len(selected)} presigned GETs were not used; "
                "those files were read again with get_object"
            )

        # The checks on the CSV come first: the server is still copying the last chunks.
        mark = time.perf_counter()
        skipped = missing + combined.skipped_files
        # Rejects are kept whatever happens next, so a failed run still shows what it refused.
        reject_uris = _write_rejects(client, bucket, context.run_id, skipped, combined)
        checks, duplicates = _csv_checks(
            combined, profile, len(company_filter.files), skipped, reject_uris, settings
        )
        checks.insert(0, limits)
        steps["combine_check_seconds"] = time.perf_counter() - mark
        blocking = _blocking_failures(checks)
        if blocking:
            yield from checks
            names = ", ".join(c.check_name for c in blocking)
            raise Failure(
                f"blocking checks failed ({names}); Output/historical_stock_data.csv was not "
                f"replaced and the table is untouched. Rejects: {reject_uris or 'none'}"
            )

        if load is not None:
            mark = time.perf_counter()
            load.finish(csv_output.rows)  # the table's content check now runs on the server
            steps["copy_tail_seconds"] = time.perf_counter() - mark

        mark = time.perf_counter()
        crc32 = _csv_crc32(csv_output, load)
        fingerprint = csv_output.fingerprint
        client.put_object(
            Bucket=bucket,
            Key=OUTPUT_KEY,
            Body=csv_output.body(),
            ContentType="text/csv",
            Metadata={
                ROWS_META: str(csv_output.rows),
                FINGERPRINT_META: fingerprint,
                CRC32_META: str(crc32),
                DUPLICATES_META: str(duplicates),
                RUN_META: context.run_id,
            },
        )
        steps["write_seconds"] = time.perf_counter() - mark
        yield _csv_materialization(
            bucket, combined, csv_output, profile, len(company_filter.files), skipped,
            reject_uris, checks, steps, started, reader.fallbacks,
        )  # fmt: skip
        if load is not None and postgres is not None:
            try:
                loaded = load.commit(duplicates, deep=settings.deep_table_checks)
            except LoadCheckFailed as err:
                yield from _failed_table_checks(err)
            preview = _preview_after_commit(context, load.connection, postgres.table)
            source = {
                "run_id": context.run_id,
                "fingerprint": fingerprint,
                "rows": str(csv_output.rows),
            }
            yield _table_materialization(context, loaded, preview, bucket, source, postgres)


def _preview_after_commit(context: AssetExecutionContext, conn: Any, table: str) -> list[tuple]:
    """A few rows for the UI, read after COMMIT. The load has happened by then, so a failure
    here is logged, not raised: a failed run would tell people the table is unchanged."""
    try:
        return preview_rows(conn, 5, table)
    except psycopg2.Error as err:
        context.log.warning(f"{table} was loaded, but its preview could not be read: {err}")
        return []


def _csv_crc32(csv_output: CsvOutput, load: PipelinedLoad | None) -> int:
    """The CSV's content checksum: as streamed into COPY, as summed while writing, or (the COPY
    having failed part-way) computed now."""
    if load is not None and load.streamed_crc32 is not None:
        return load.streamed_crc32
    if csv_output.crc32 is not None:
        return csv_output.crc32
    return quality.line_checksum(csv_lines(csv_output.getvalue()))


def _csv_materialization(
    bucket: str,
    combined: CombinedOutput,
    csv_output: CsvOutput,
    profile: quality.OutputProfile,
    files_selected: int,
    skipped: list[FileResult],
    reject_uris: dict[str, str],
    checks: list[AssetCheckResult],
    steps: dict[str, float],
    started: float,
    reads_retried: int,
) -> MaterializeResult:
    results = combined.files
    preview = combined.table.slice(0, 5).to_pylist()
    return MaterializeResult(
        asset_key=CSV,
        data_version=DataVersion(csv_output.fingerprint),
        check_results=checks,
        metadata={
            "dagster/row_count": csv_output.rows,
            "dagster/column_schema": TABLE_SCHEMA,
            "rows_read": combined.rows_read,
            "rows_rejected": combined.rows_rejected,
            "open_zero_rows": sum(f.open_zero_rows for f in results),
            "files_selected": files_selected,
            "files_read": sum(1 for f in results if not f.skip_reason),
            "files_skipped": len(skipped),
            "skipped_files": MetadataValue.md(
                _markdown_table(["file", "reason"], [[f.file_name, f.skip_reason] for f in skipped])
                if skipped
                else "none"
            ),
            "companies": len({f.company for f in results if f.rows_written}),
            "bytes_read": sum(f.bytes_read for f in results),
            # GETs whose first, presigned try failed and were read again by get_object.
            "reads_retried": reads_retried,
            "bytes_written": csv_output.size,
            "content_fingerprint": csv_output.fingerprint,
            **{name: round(seconds, 3) for name, seconds in steps.items()},
            "duration_seconds": round(time.perf_counter() - started, 3),
            "location": MetadataValue.url(s3_uri(bucket, OUTPUT_KEY)),
            "rejects": MetadataValue.json(reject_uris or {}),
            "rows_per_year": MetadataValue.md(
                quality.markdown_bar_chart(dict(sorted(profile.rows_per_year.items())), "year")
            ),
            "preview": MetadataValue.md(
                _markdown_table(OUTPUT_COLUMNS, [list(r.values()) for r in preview])
            ),
        },
    )


def _failed_table_checks(err: LoadCheckFailed):
    for outcome in err.outcomes:
        yield result(TABLE, outcome.name, outcome.passed, outcome.metadata)
    raise Failure(str(err)) from err


def _table_materialization(
    context: AssetExecutionContext,
    loaded: LoadResult,
    preview: list[tuple],
    bucket: str,
    source: dict[str, str],
    postgres: PostgresResource,
) -> MaterializeResult:
    context.log.info(
        f"loaded {loaded.rows_loaded} rows into {postgres.table} in {loaded.seconds:.1f}s"
    )
    return MaterializeResult(
        asset_key=TABLE,
        data_version=DataVersion(source["fingerprint"]),
        check_results=[result(TABLE, o.name, o.passed, o.metadata) for o in loaded.checks],
        metadata={
            "dagster/row_count": loaded.rows_loaded,
            "dagster/column_schema": TABLE_SCHEMA,
            "dagster/table_name": postgres.table,
            "rows_before": loaded.rows_before,
            "rows_expected_from_csv": int(source["rows"]),
            "source_csv": MetadataValue.url(s3_uri(bucket, OUTPUT_KEY)),
            "source_run_id": source["run_id"],
            "database": postgres.display_url,
            "load_seconds": round(loaded.seconds, 3),
            "preview": MetadataValue.md(
                _markdown_table(OUTPUT_COLUMNS, [list(r) for r in preview])
            ),
        },
    )


def _optional_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _load_table_from_object(
    context: AssetExecutionContext,
    client: Any,
    postgres: PostgresResource,
    settings: PipelineSettings,
):
    """The table alone: load the CSV object as it is in S3 (written by an earlier run)."""
    bucket = settings.naming.source_bucket
    try:
        head = client.head_object(Bucket=bucket, Key=OUTPUT_KEY)
    except client.exceptions.ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise Failure(
                f"{s3_uri(bucket, OUTPUT_KEY)} is not there to load: materialise "
                "historical_stock_data_csv first"
            ) from err
        raise Failure(f"{s3_uri(bucket, OUTPUT_KEY)} could not be read: {err}") from err
    object_meta = head.get("Metadata", {})
    if ROWS_META not in object_meta:
        raise Failure(f"{s3_uri(bucket, OUTPUT_KEY)} was not written by this pipeline")
    expected_rows = int(object_meta[ROWS_META])
    # IfMatch: load exactly the object whose metadata was just read, not a newer one.
    body = client.get_object(Bucket=bucket, Key=OUTPUT_KEY, IfMatch=head["ETag"])["Body"]
    with postgres.connect() as conn:
        reader = quality.ChecksummingReader(body, quality.checksum_algorithm(conn.server_version))
        checks = [
            check_table_matches_csv(
                expected_rows, _optional_int(object_meta.get(CRC32_META)), reader
            ),
            check_no_duplicate_keys(
                _optional_int(object_meta.get(DUPLICATES_META)), deep=settings.deep_table_checks
            ),
        ]
        try:
            loaded = load_csv(conn, reader, checks=checks, table=postgres.table)
        except LoadCheckFailed as err:
            yield from _failed_table_checks(err)
        preview = _preview_after_commit(context, conn, postgres.table)
    source = {
        "run_id": object_meta.get(RUN_META, "unknown"),
        "fingerprint": object_meta.get(FINGERPRINT_META, head["ETag"].strip('"')),
        "rows": str(expected_rows),
    }
    yield _table_materialization(context, loaded, preview, bucket, source, postgres)
