"""The sharded mode: the same pipeline split over N steps, then one final step, Dagster-free.

Files go to shards by a stable hash of their company name (`shard_of`), so every file of one
company lands in the same shard: the one rule that spans files (a (company, date) is written
once, the first file in filter order wins; see `combine.OutputCombiner`) stays inside a shard,
and each shard gives exactly the rows the single path gives for its files.

- `run_shard` (one per shard, each in its own process): reads its files (the filter's order
  restricted to the shard), transforms, de-duplicates and profiles them with `build_output`,
  writes its CSV part to the scratch object `Output/_shards/<run id>/<i>.csv`, and COPYs the
  part into its own UNLOGGED staging table `<table>__staging_<run>_<i>`. It returns a small
  `ShardResult`: per-file counts, rejects and part lengths, the profile's conclusions; no rows.
- `shard_merge.finish_sharded` (the final step): the verdicts over all shards (the single
  path's checks); then `Output/historical_stock_data.csv` assembled in filter order by a
  streaming merge of the parts (each file's part length says how many bytes to take next from
  which shard's stream; a few MiB in memory at a time), uploaded as a multipart upload; then
  ONE transaction: TRUNCATE, INSERT … SELECT from the staging tables, the in-transaction
  checks against the assembled bytes, the CSV published, the typed view and the ledger row,
  COMMIT. Staging tables and scratch objects are removed whatever happens (and a crashed
  run's by the next run).

Why not UploadPartCopy from the shards' parts (the issue's first idea): the CSV is in filter
order, and a shard holds the files of many companies scattered through that order, so
consecutive output bytes come from different shards file by file. A copied part has one source
range and must be at least 5 MiB (all but the last), while one file's rows are ~100 KB: the
parts cannot be cut along filter order. The final step streams the parts instead: one GET per
shard, read sequentially, and the CSV's SHA-256 fingerprint and content checksum are computed
on the way (neither composes from the parts). The merged upload goes to a scratch key first and
is published with a server-side copy carrying the object metadata the single path writes (row
count, fingerprint, checksum), which is known only once the last byte went through.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from stock_assets.pipeline.companies import company_name
from stock_assets.pipeline.load import create_table
from stock_assets.pipeline.output import build_output, csv_byte_length
from stock_assets.pipeline.quality import OutputProfile
from stock_assets.pipeline.records import FileResult, RejectedRow
from stock_assets.pipeline.run import Connect, RunConfig
from stock_assets.pipeline.s3 import ObjectReader, ObjectTooLarge, presigned_get_session, read_files
from stock_assets.pipeline.sql_files import statements
from stock_assets.settings import SCRATCH_PREFIX

READ_BYTES = 1 << 20


def shard_of(file_name: str, shards: int) -> int:
    """The shard of a file: a stable hash of its company, so one company's files share one."""
    return zlib.crc32(company_name(file_name).encode()) % shards


def staging_table(table: str, run_id: str, index: int) -> str:
    name = f"{_staging_prefix(table, run_id)}{index}"
    if len(name.encode()) > 63:  # PostgreSQL would cut it: every shard's would be one table
        raise ValueError(
            f"table name {table!r} is too long for the sharded job's staging tables "
            f"({name!r} is over PostgreSQL's 63 bytes); use stock_pipeline_job or a shorter name"
        )
    return name


def _staging_prefix(table: str, run_id: str = "") -> str:
    return f"{table}__staging_{run_id.replace('-', '')[:8]}_" if run_id else f"{table}__staging_"


def assembled_key(run_id: str) -> str:
    return f"{SCRATCH_PREFIX}{run_id}/assembled.csv"


def part_key(run_id: str, index: int) -> str:
    return f"{SCRATCH_PREFIX}{run_id}/{index}.csv"


class ShardFailed(Exception):
    """A shard step could not make its part; nothing was published."""


@dataclass
class ShardResult:
    """What a shard step hands the final step: counts, rejects and part lengths, no rows."""

    index: int
    files: list[FileResult] = field(default_factory=list)  # tables released
    part_bytes: list[int] = field(default_factory=list)  # bytes each of `files` wrote
    cross_file_duplicates: list[RejectedRow] = field(default_factory=list)
    unread: dict[str, str] = field(default_factory=dict)  # name → why it was not read
    rows: int = 0
    size: int = 0
    crc32: int = 0
    profile: OutputProfile = field(default_factory=OutputProfile)
    reads_retried: int = 0
    oversized: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None


def run_shard(
    config: RunConfig, client: Any, connect: Connect, names: list[str], shards: int, index: int
) -> ShardResult:
    """One shard's files → its CSV part (scratch object) and its staging table. Never raises for
    a failure of its own: it cleans up what it made and says so (`error`), so that the final
    step still runs and removes every shard's scratch."""
    mine = [name for name in names if shard_of(name, shards) == index]
    shard = ShardResult(index)
    try:
        _make_part(config, client, connect, mine, shard)
    except ObjectTooLarge as err:
        shard.oversized.append((err.key.rsplit("/", 1)[-1], err.size))
    except Exception as err:  # noqa: BLE001  reported by the final step, which fails the run
        shard.error = f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):  # the final step tries again
            _remove_part(client, config, connect, index)
    return shard


def _remove_part(client: Any, config: RunConfig, connect: Connect, index: int) -> None:
    client.delete_object(Bucket=config.bucket, Key=part_key(config.run_id, index))
    staging = staging_table(config.table, config.run_id, index)
    with connect() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(staging)))
        conn.commit()


def _make_part(
    config: RunConfig, client: Any, connect: Connect, names: list[str], shard: ShardResult
) -> None:
    lengths: dict[str, int] = {}
    with contextlib.closing(presigned_get_session(client, config.verify)) as http:
        reader = ObjectReader(client, config.bucket, http, max_bytes=config.max_file_bytes)
        combined, csv, profile = build_output(
            read_files(reader, names, shard.unread, config.read_concurrency),
            names,
            on_rows=lambda name, rows: lengths.__setitem__(name, csv_byte_length(rows)),
        )
    shard.files, shard.cross_file_duplicates = combined.files, combined.cross_file_duplicates
    shard.part_bytes = [lengths.get(f.file_name, 0) for f in combined.files]
    if sum(shard.part_bytes) != csv.size:
        raise RuntimeError(f"part lengths add up to {sum(shard.part_bytes)}, not {csv.size}")
    shard.rows, shard.size, shard.crc32 = csv.rows, csv.size, csv.crc32 or 0
    shard.profile, shard.reads_retried = profile.detached(), reader.fallbacks
    with connect() as conn, conn.cursor() as cur:
        staging = staging_table(config.table, config.run_id, shard.index)
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(staging)))
        create_table(cur, staging)
        cur.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(sql.Identifier(staging)))
        truncate, copy = statements("insert_query.sql", table=staging)  # FREEZE needs both
        cur.execute(truncate)
        cur.copy_expert(copy, csv.body(), size=READ_BYTES)
        conn.commit()
    # Last: the managed upload (multipart when large) closes the spool when it is done.
    client.upload_fileobj(csv.body(), config.bucket, part_key(config.run_id, shard.index))


def clean_up(
    client: Any,
    bucket: str,
    connect: Connect,
    table: str,
    run_id: str | None,
    keep: Collection[str] = (),
) -> None:
    """Remove the scratch objects and staging tables of `run_id`, or (None) of every run but
    those in `keep` (a crashed run's leftovers; runs still going are kept)."""
    prefix = SCRATCH_PREFIX + (f"{run_id}/" if run_id else "")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [o["Key"] for o in page.get("Contents", []) if _removable(o["Key"], keep)]
        if keys:
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    for upload in uploads:
        if _removable(upload["Key"], keep):
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    pattern = _staging_prefix(table, run_id or "").replace("_", r"\_") + "%"
    kept = tuple(_staging_prefix(table, k) for k in keep)
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE %s",
            (pattern,),
        )
        for (name,) in cur.fetchall():
            if not name.startswith(kept):
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.commit()


def _removable(key: str, keep: Collection[str]) -> bool:
    return not any(f"/{k}/" in key for k in keep)
