"""The sharded mode's final step, Dagster-free: the verdicts over every shard, the CSV assembled
in filter order from the shards' parts, and the table swapped in from the staging tables in one
transaction. Why a streamed merge and not UploadPartCopy: see `shards`' docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.csv as pv
from botocore.exceptions import BotoCoreError, ClientError
from psycopg2 import sql

from stock_assets.pipeline.columns import OUTPUT_COLUMNS
from stock_assets.pipeline.combine import CombinedOutput, empty_output
from stock_assets.pipeline.ledger import LoadRecord
from stock_assets.pipeline.load import (
    LoadCheckFailed,
    TableLoad,
    check_no_duplicate_keys,
    check_table_matches_csv,
)
from stock_assets.pipeline.output import short_digest
from stock_assets.pipeline.quality import ChecksummingReader, OutputProfile, checksum_algorithm
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.run import (
    CRC32_META,
    DUPLICATES_META,
    FINGERPRINT_META,
    ROWS_META,
    RUN_META,
    Connect,
    CsvOutcome,
    RunConfig,
    TableOutcome,
    commit_load,
    object_version,
    read_preview,
    write_rejects,
)
from stock_assets.pipeline.shards import (
    READ_BYTES,
    ShardFailed,
    ShardResult,
    assembled_key,
    clean_up,
    part_key,
    shard_of,
    staging_table,
)
from stock_assets.pipeline.verdicts import csv_verdicts, input_limits
from stock_assets.settings import OUTPUT_KEY

_LOG = logging.getLogger(__name__)
UPLOAD_PART_BYTES = 8 << 20  # S3's parts: at least 5 MiB but the last


@dataclass
class AssembledCsv:
    """The CSV the final step assembled (what `metadata.csv_metadata` reads of a CsvOutput)."""

    rows: int
    size: int
    fingerprint: str


@dataclass
class ShardedOutcome:
    csv: CsvOutcome
    table: TableOutcome | None = None
    published: bool = False  # the CSV object was replaced


def finish_sharded(
    config: RunConfig,
    client: Any,
    connect: Connect,
    names: list[str],
    shards: list[ShardResult],
    started_at: datetime,
    log: logging.Logger = _LOG,
) -> ShardedOutcome:
    """The verdicts over all shards, the CSV in filter order, the table in one transaction (see
    the module's docstring). Raises ShardFailed if a shard failed; the scratch objects and the
    staging tables of this run are removed in every case, or, if that fails, by the next sharded
    run's plan step (a warning on `log`: the run's own log when Dagster passes it)."""
    try:
        return _finish(config, client, connect, names, shards, started_at)
    finally:
        # A failed clean-up must neither fail a run whose table is committed nor hide the error
        # that ended it: the leftovers are only scratch, and the next plan step removes them.
        try:
            clean_up(client, config.bucket, connect, config.table, config.run_id)
        except Exception:  # noqa: BLE001 - any failure here is reported, never raised
            log.warning(
                "scratch of run %s left for the next sharded run", config.run_id, exc_info=True
            )


def _finish(
    config: RunConfig,
    client: Any,
    connect: Connect,
    names: list[str],
    shards: list[ShardResult],
    started_at: datetime,
) -> ShardedOutcome:
    if failed := [s for s in shards if s.error]:
        problems = "; ".join(f"shard {s.index}: {s.error}" for s in failed)
        raise ShardFailed(f"{problems}. Nothing was published: the CSV and the table are unchanged")
    order = {name: i for i, name in enumerate(names)}
    # Named in filter order, the order in which the single path meets them.
    oversized = sorted((o for s in shards for o in s.oversized), key=lambda o: order[o[0]])
    largest = max((size for _, size in oversized), default=0)
    limits = input_limits(len(names), config.max_files, config.max_file_bytes, oversized, largest)
    if oversized:
        return ShardedOutcome(CsvOutcome([limits], len(names)))
    by_name = {f.file_name: f for s in shards for f in s.files}
    unread = {name: reason for s in shards for name, reason in s.unread.items()}
    cross = sorted(
        (r for s in shards for r in s.cross_file_duplicates), key=lambda r: order[r.file_name]
    )
    combined = CombinedOutput(None, [by_name[n] for n in names if n in by_name], cross, _head([]))
    skipped = [FileResult(name, 0, skip_reason=unread[name]) for name in names if name in unread]
    skipped += combined.skipped_files
    rejects = write_rejects(client, config.bucket, config.run_id, skipped, combined)
    profile = OutputProfile.merged(s.profile for s in sorted(shards, key=lambda s: s.index))
    verdicts, duplicates = csv_verdicts(
        combined, profile, len(names), skipped, rejects, config.max_reject_fraction
    )
    limits.metadata["largest_bytes"] = max((f.bytes_read for f in combined.files), default=0)
    # The run's durations as the single path reports them: the shards read and transformed
    # until this step began; what follows writes.
    mark, began = time.perf_counter(), datetime.now(UTC)
    seconds = {"read_transform_seconds": (began - started_at).total_seconds()}
    csv = CsvOutcome(
        [limits, *verdicts], len(names), combined, None, profile, skipped, rejects, seconds
    )
    csv.reads_retried = sum(s.reads_retried for s in shards)
    outcome = ShardedOutcome(csv)
    if outcome.csv.blocking:
        return outcome

    rows, crc32 = sum(s.rows for s in shards), sum(s.crc32 for s in shards)
    with connect() as conn:
        stream = ChecksummingReader(
            _ChunkReader(_merged_parts(client, config, names, shards)),
            checksum_algorithm(conn.server_version),
        )
        assembled, head = _upload_merged(client, config, stream)
        if stream.lines != rows or stream.checksums["crc32"] != crc32:
            raise RuntimeError(
                f"the assembled CSV ({stream.lines} lines) differs from its shards' parts "
                f"({rows} rows): nothing was published"
            )
        outcome.csv.csv, combined.head = assembled, head  # type: ignore[assignment]
        table = outcome.table = TableOutcome([], rows, config.run_id, assembled.fingerprint)
        with _StagedLoad(conn, config.table) as load:
            load.insert_from([staging_table(config.table, config.run_id, s.index) for s in shards])
            try:
                load.check(
                    [
                        check_table_matches_csv(rows, crc32, stream),
                        check_no_duplicate_keys(duplicates, deep=config.deep_table_checks),
                    ]
                )
            except LoadCheckFailed as err:
                table.verdicts, table.error = err.outcomes, err
                return outcome  # leaving the block rolls back; the CSV was not published
            _publish(client, config, assembled, crc32, duplicates)
            outcome.published = True
            version = _published_version(client, config)
            record = LoadRecord(
                config.run_id, config.triggered_by, started_at,
                files_read=combined.files_read, files_skipped=len(skipped),
                rows_rejected=combined.rows_rejected,
                content_checksum=f"crc32-sum:{crc32}", csv_version=version,
            )  # fmt: skip
            commit_load(table, lambda: load.commit(record))
        read_preview(table, conn, config.table)
    seconds["write_seconds"] = time.perf_counter() - mark
    seconds["duration_seconds"] = (datetime.now(UTC) - started_at).total_seconds()
    return outcome


class _StagedLoad(TableLoad):
    """The table's load transaction (`TableLoad`: TRUNCATE, checks, view, ledger, COMMIT) fed
    from the staging tables instead of a COPY."""

    def insert_from(self, tables: list[str]) -> int:
        columns = sql.SQL(", ").join(map(sql.Identifier, OUTPUT_COLUMNS))
        sources = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(t)) for t in tables
        )
        self._cursor.execute(
            sql.SQL("INSERT INTO {} ({}) {}").format(sql.Identifier(self.table), columns, sources)
        )
        self.rows_loaded += self._cursor.rowcount
        return self._cursor.rowcount


def _merged_parts(
    client: Any, config: RunConfig, names: list[str], shards: list[ShardResult]
) -> Iterator[bytes]:
    """The CSV's bytes in filter order: for each file, its part length from its shard's stream
    (each part is read once, front to back, a MiB at a time)."""
    lengths = {f.file_name: n for s in shards for f, n in zip(s.files, s.part_bytes, strict=True)}
    count = len(shards)
    streams = {
        s.index: client.get_object(Bucket=config.bucket, Key=part_key(config.run_id, s.index))[
            "Body"
        ]
        for s in shards
        if s.size
    }
    try:
        for name in names:
            remaining = lengths.get(name, 0)
            while remaining:
                chunk = streams[shard_of(name, count)].read(min(remaining, READ_BYTES))
                if not chunk:
                    raise RuntimeError(f"the part of shard {shard_of(name, count)} ended early")
                remaining -= len(chunk)
                yield chunk
    finally:
        for body in streams.values():
            body.close()


class _ChunkReader:
    """A file object over an iterator of byte chunks (`read` returns the next one; b"": end)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _upload_merged(
    client: Any, config: RunConfig, stream: ChecksummingReader
) -> tuple[AssembledCsv, pa.Table]:
    """Multipart upload of `stream` to the run's scratch key; its fingerprint and first rows."""
    key, digest = assembled_key(config.run_id), hashlib.sha256()
    upload = client.create_multipart_upload(Bucket=config.bucket, Key=key, ContentType="text/csv")
    parts: list[dict[str, Any]] = []
    buffer, size, head = bytearray(), 0, b""

    def send() -> None:
        number = len(parts) + 1
        answer = client.upload_part(
            Bucket=config.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
            Body=bytes(buffer),
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        buffer.clear()

    try:
        while chunk := stream.read():
            digest.update(chunk)
            size += len(chunk)
            buffer += chunk
            if head.count(b"\n") < 5:
                head += chunk[:65536]  # lines are ~80 bytes
            if len(buffer) >= UPLOAD_PART_BYTES:
                send()
        if buffer or not parts:
            send()
        client.complete_multipart_upload(
            Bucket=config.bucket, Key=key, UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(
                Bucket=config.bucket, Key=key, UploadId=upload["UploadId"]
            )
        raise
    return AssembledCsv(stream.lines, size, short_digest(digest)), _head(head.split(b"\n")[:5])


def _head(lines: list[bytes]) -> pa.Table:
    """The first output rows as the single path's preview table."""
    text = b"".join(line + b"\n" for line in lines if line)
    if not text:
        return empty_output()
    options = pv.ConvertOptions(
        column_types=dict.fromkeys(OUTPUT_COLUMNS, pa.string()),
        strings_can_be_null=True,
        null_values=[""],
    )
    read = pv.ReadOptions(column_names=OUTPUT_COLUMNS)
    return pv.read_csv(io.BytesIO(text), read_options=read, convert_options=options)


def _publish(
    client: Any, config: RunConfig, csv: AssembledCsv, crc32: int, duplicates: int
) -> None:
    """Replace the CSV object with the assembled one (a server-side copy, with the metadata the
    single path writes)."""
    client.copy(
        {"Bucket": config.bucket, "Key": assembled_key(config.run_id)},
        config.bucket,
        OUTPUT_KEY,
        ExtraArgs={
            "ContentType": "text/csv",
            "MetadataDirective": "REPLACE",
            "Metadata": {
                ROWS_META: str(csv.rows),
                FINGERPRINT_META: csv.fingerprint,
                CRC32_META: str(crc32),
                DUPLICATES_META: str(duplicates),
                RUN_META: config.run_id,
            },
        },
    )


def _published_version(client: Any, config: RunConfig) -> str | None:
    """The published CSV's version (the managed copy does not return it); None if S3 will not
    say: the CSV is published either way, and the table must follow it."""
    try:
        return object_version(client.head_object(Bucket=config.bucket, Key=OUTPUT_KEY))
    except (BotoCoreError, ClientError):
        return None
