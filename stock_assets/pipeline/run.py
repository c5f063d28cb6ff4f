"""The whole data flow, read top to bottom, Dagster-free.

`run_pipeline` is the one entry: read the filter → read the files it names → transform → CSV
chunks (streamed into the table's open transaction) → rejects kept → the CSV's verdicts → publish
the CSV → commit the table. It returns one `PipelineResult`; the Dagster layer turns that into
materialisations and check results and never calls back down. `load_table_from_object` is the
table-alone path (the CSV object already in S3).

A blocking verdict leaves the CSV object and the table as they were. The table commits only
after the CSV was checked and published, so it never holds rows the published CSV does not. A
database failure (during the COPY or at the commit) leaves the table unchanged, while the CSV,
which does not depend on the database, is still checked and published. (The sharded job
publishes the CSV only once its table has passed its checks: see `shard_merge`.)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pyarrow as pa

from stock_assets.pipeline.combine import CombinedOutput
from stock_assets.pipeline.companies import CompanyFilter, FilterFileError, parse_company_filter
from stock_assets.pipeline.ledger import LoadRecord
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
    csv_lines,
    rejected_rows_csv,
    skipped_files_csv,
)
from stock_assets.pipeline.quality import (
    ChecksummingReader,
    OutputProfile,
    checksum_algorithm,
    line_checksum,
)
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.s3 import (
    ObjectReader,
    ObjectTooLarge,
    http_status,
    presigned_get_session,
    read_files,
    read_object,
    s3_uri,
)
from stock_assets.pipeline.verdicts import Verdict, csv_verdicts, input_limits
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, REJECTED_PREFIX, TABLE_NAME

# The CSV object's own metadata, so that loading the table alone knows what to expect.
ROWS_META = "row-count"
FINGERPRINT_META = "content-fingerprint"
CRC32_META = "content-crc32"
DUPLICATES_META = "duplicate-keys"
RUN_META = "dagster-run-id"

Connect = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class RunConfig:
    """What one run needs to know; the limits are the spec's (section 5)."""

    bucket: str
    run_id: str
    table: str = TABLE_NAME
    max_files: int = 1000
    max_file_bytes: int = 1_000_000
    read_concurrency: int = 8
    max_reject_fraction: float = 0.01
    deep_table_checks: bool = False
    verify: bool | str | None = None  # TLS verification of the presigned reads (None: boto3's)
    triggered_by: str = "unknown"  # what started the run, for the load ledger


class FilterError(Exception):
    """The filter file is missing or unusable: nothing can be selected."""


@dataclass
class CsvOutcome:
    """What making the CSV produced and concluded (no blocking verdict: the object was replaced)."""

    verdicts: list[Verdict]
    files_selected: int
    combined: CombinedOutput | None = None
    csv: CsvOutput | None = None
    profile: OutputProfile | None = None
    skipped: list[FileResult] = field(default_factory=list)
    rejects: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reads_retried: int = 0

    @property
    def blocking(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.stops_the_run]


@dataclass
class TableOutcome:
    """The table's load: `loaded` once committed, else `error` (the table is unchanged)."""

    verdicts: list[Verdict]
    expected_rows: int
    source_run_id: str
    fingerprint: str
    loaded: LoadResult | None = None
    error: BaseException | None = None
    preview: list[tuple] = field(default_factory=list)
    preview_error: str | None = None


@dataclass
class PipelineResult:
    company_filter: CompanyFilter
    csv: CsvOutcome
    table: TableOutcome | None = None  # None: the table was not asked for, or the CSV failed


def read_filter(client: Any, bucket: str, max_files: int) -> CompanyFilter:
    try:
        data = read_object(client, bucket, FILTER_KEY)
    except client.exceptions.NoSuchKey as err:
        raise FilterError(f"filter file {s3_uri(bucket, FILTER_KEY)} does not exist") from err
    try:
        return parse_company_filter(data, max_entries=max_files)
    except FilterFileError as err:
        raise FilterError(f"filter file {s3_uri(bucket, FILTER_KEY)} is unusable: {err}") from err


def run_pipeline(config: RunConfig, client: Any, connect: Connect | None = None) -> PipelineResult:
    """The CSV, and the table too when `connect` is given (see the module's docstring)."""
    started, started_at = time.perf_counter(), datetime.now(UTC)
    _use_jemalloc()
    _freeze_startup_objects()
    _settle_pyarrow_pandas_check()
    company_filter = read_filter(client, config.bucket, config.max_files)
    names = company_filter.files
    limits = input_limits(len(names), config.max_files, config.max_file_bytes)
    load = PipelinedLoad(connect, config.table) if connect is not None else None
    with (
        contextlib.closing(presigned_get_session(client, config.verify)) as http,
        load or contextlib.nullcontext(),
    ):
        reader = ObjectReader(client, config.bucket, http, max_bytes=config.max_file_bytes)
        unread: dict[str, str] = {}
        try:
            # Downloads (a thread pool, in order), transformation in batches, CSV chunks and the
            # COPY of those chunks into the table (another thread) all overlap.
            combined, csv, profile = build_output(
                read_files(reader, names, unread, config.read_concurrency),
                names,
                forward=load.write if load is not None else None,
            )
        except ObjectTooLarge as err:
            name = err.key.rsplit("/", 1)[-1]
            verdict = input_limits(
                len(names), config.max_files, config.max_file_bytes, [(name, err.size)], err.size
            )
            return PipelineResult(company_filter, CsvOutcome([verdict], len(names)))
        seconds = {"read_transform_seconds": time.perf_counter() - started}

        # Rejects are kept whatever happens next: a failed run still shows what it refused.
        skipped = [FileResult(name, 0, skip_reason=reason) for name, reason in unread.items()]
        skipped += combined.skipped_files
        rejects = write_rejects(client, config.bucket, config.run_id, skipped, combined)
        verdicts, duplicates = csv_verdicts(
            combined, profile, len(names), skipped, rejects, config.max_reject_fraction
        )
        limits.metadata["largest_bytes"] = max((f.bytes_read for f in combined.files), default=0)
        outcome = CsvOutcome(
            [limits, *verdicts], len(names), combined, csv, profile, skipped, rejects, seconds,
            reader.fallbacks,
        )  # fmt: skip
        if outcome.blocking:
            return PipelineResult(company_filter, outcome)  # leaving the block rolls back

        mark = time.perf_counter()
        if load is not None:
            load.finish(csv.rows)  # the table's content check now runs beside the upload
        crc32 = _csv_crc32(csv, load)
        version = _publish_csv(client, config, csv, crc32, duplicates)
        seconds["write_seconds"] = time.perf_counter() - mark
        table = None
        if load is not None:
            table = TableOutcome([], csv.rows, config.run_id, csv.fingerprint)
            record = LoadRecord(
                config.run_id, config.triggered_by, started_at,
                files_read=combined.files_read,
                files_skipped=len(skipped), rows_rejected=combined.rows_rejected,
                content_checksum=f"crc32-sum:{crc32}", csv_version=version,
            )  # fmt: skip
            commit_load(table, lambda: load.commit(duplicates, config.deep_table_checks, record))
            read_preview(table, load.connection, config.table)
        seconds["duration_seconds"] = time.perf_counter() - started
        return PipelineResult(company_filter, outcome, table)


def _use_jemalloc() -> None:
    """Arrow's jemalloc pool hands the memory of each finished batch back to the system; its
    default (mimalloc) keeps it, and a run's peak RSS grows with the input (see
    benchmarks/results/README.md). Builds without jemalloc keep their default."""
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


@functools.cache  # once per process: a later freeze would also pin earlier runs' garbage
def _freeze_startup_objects() -> None:
    """Take what the process built before its first run (its imports, Dagster's and ours: about
    300,000 objects that live as long as the process) out of the garbage collector's scans.
    Otherwise each full collection during the run, and those Python makes at exit, walk them
    all again (the time it saves: benchmarks/results/README.md)."""
    gc.freeze()


class _NoPandasForImplicitChecks:
    """An import finder that refuses `pandas`, installed only while pyarrow settles its check."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is not needed by the run's pyarrow calls")


@functools.cache  # once per process
def _settle_pyarrow_pandas_check() -> None:
    """pyarrow asks "is this a pandas object?" on the first `pa.array()` and imports pandas to
    answer, where pandas is installed: an import that holds the GIL, in the middle of the
    transformation (figures: benchmarks/results/README.md). The run never hands pyarrow a pandas
    object, so let that first check find no pandas. Only the implicit checks are settled: an
    explicit `to_pandas()` or `from_pandas()` later imports pandas as usual. Nothing to do where
    pandas is already imported."""
    if "pandas" in sys.modules:
        return
    finder = _NoPandasForImplicitChecks()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([])
    finally:
        sys.meta_path.remove(finder)


def write_rejects(
    client: Any, bucket: str, run_id: str, skipped: list[FileResult], combined: CombinedOutput
) -> dict[str, str]:
    """Keep every rejected row and skipped file, with its reason, under Output/rejected/<run>/."""
    prefix, written = f"{REJECTED_PREFIX}{run_id}/", {}
    if combined.rows_rejected:
        key = prefix + "rejected_rows.csv"
        client.put_object(Bucket=bucket, Key=key, Body=rejected_rows_csv(combined.rejected_rows))
        written["rejected_rows"] = s3_uri(bucket, key)
    if skipped:
        key = prefix + "skipped_files.csv"
        client.put_object(Bucket=bucket, Key=key, Body=skipped_files_csv(skipped))
        written["skipped_files"] = s3_uri(bucket, key)
    return written


def _csv_crc32(csv: CsvOutput, load: PipelinedLoad | None) -> int:
    """The CSV's content checksum: as streamed into COPY, as summed while writing, or (the COPY
    having failed part-way) computed now."""
    if load is not None and load.streamed_crc32 is not None:
        return load.streamed_crc32
    if csv.crc32 is not None:
        return csv.crc32
    return line_checksum(csv_lines(csv.getvalue()))


def _publish_csv(
    client: Any, config: RunConfig, csv: CsvOutput, crc32: int, duplicates: int
) -> str:
    """Upload the CSV with what the table-alone load needs to know; returns its version (the
    bucket's VersionId when versioning is on, else the ETag)."""
    response = client.put_object(
        Bucket=config.bucket,
        Key=OUTPUT_KEY,
        Body=csv.body(),
        ContentType="text/csv",
        Metadata={
            ROWS_META: str(csv.rows),
            FINGERPRINT_META: csv.fingerprint,
            CRC32_META: str(crc32),
            DUPLICATES_META: str(duplicates),
            RUN_META: config.run_id,
        },
    )
    return object_version(response)


def object_version(response: dict[str, Any]) -> str:
    return response.get("VersionId") or response["ETag"].strip('"')


def commit_load(table: TableOutcome, commit: Callable[[], LoadResult]) -> None:
    """COMMIT; a failed check or a database error is kept on `table` (the table is unchanged)."""
    try:
        table.loaded = commit()
        table.verdicts = table.loaded.checks
    except LoadCheckFailed as err:
        table.verdicts, table.error = err.outcomes, err
    except Exception as err:  # noqa: BLE001  kept: the caller reports what was done, then fails
        table.error = err


def read_preview(table: TableOutcome, conn: Any, name: str) -> None:
    """A few rows for the UI, read after COMMIT. The load has happened by then, so a failure
    here is noted, not raised: a failed run would tell people the table is unchanged."""
    if table.loaded is None:
        return
    try:
        table.preview = preview_rows(conn, 5, name)
    except psycopg2.Error as err:
        table.preview_error = f"{name} was loaded, but its preview could not be read: {err}"


def _optional_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


class CsvObjectError(Exception):
    """The CSV object cannot be loaded (absent, unreadable, not written by this pipeline)."""


def load_table_from_object(config: RunConfig, client: Any, connect: Connect) -> TableOutcome:
    """The table alone: load the CSV object as it is in S3 (written by an earlier run)."""
    started_at = datetime.now(UTC)
    uri = s3_uri(config.bucket, OUTPUT_KEY)
    try:
        head = client.head_object(Bucket=config.bucket, Key=OUTPUT_KEY)
    except client.exceptions.ClientError as err:
        if http_status(err) == 404:
            raise CsvObjectError(
                f"{uri} is not there to load: materialise historical_stock_data_csv first"
            ) from err
        raise CsvObjectError(f"{uri} could not be read: {err}") from err
    meta = head.get("Metadata", {})
    if ROWS_META not in meta:
        raise CsvObjectError(f"{uri} was not written by this pipeline")
    expected_rows = int(meta[ROWS_META])
    table = TableOutcome(
        [],
        expected_rows,
        meta.get(RUN_META, "unknown"),
        meta.get(FINGERPRINT_META, head["ETag"].strip('"')),
    )
    # IfMatch: load exactly the object whose metadata was just read, not a newer one.
    body = client.get_object(Bucket=config.bucket, Key=OUTPUT_KEY, IfMatch=head["ETag"])["Body"]
    with connect() as conn:
        reader = ChecksummingReader(body, checksum_algorithm(conn.server_version))
        checks = [
            check_table_matches_csv(expected_rows, _optional_int(meta.get(CRC32_META)), reader),
            check_no_duplicate_keys(
                _optional_int(meta.get(DUPLICATES_META)), deep=config.deep_table_checks
            ),
        ]
        record = LoadRecord(
            config.run_id, config.triggered_by, started_at, csv_version=object_version(head),
            content_checksum=f"crc32-sum:{meta[CRC32_META]}" if CRC32_META in meta else None,
        )  # fmt: skip
        commit_load(table, lambda: load_csv(conn, reader, checks, config.table, record=record))
        read_preview(table, conn, config.table)
    return table
