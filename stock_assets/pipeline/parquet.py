"""The Parquet copy of the output CSV, for data scientists (issue 17), Dagster-free.

`write_parquet_copy` streams `Output/historical_stock_data.csv` from S3 through pyarrow's CSV
reader (typed columns: the spec's nine, no header) into a zstd-compressed Parquet file and
uploads it as `Output/historical_stock_data.parquet`, naming the CSV version it came from in the
object's metadata. Rows keep the CSV's order (filter order, i.e. grouped by company, then date).
Memory stays bounded: at most one row group (plus one CSV block) is held at a time.

Readers can skip row groups: each has min/max statistics (and a page index) on every column and
a Bloom filter on company_name, so `company_name = 'x'` or a date range reads only the groups
that can match.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from stock_assets.pipeline.columns import OUTPUT_COLUMNS
from stock_assets.pipeline.run import FINGERPRINT_META, ROWS_META, CsvObjectError
from stock_assets.pipeline.s3 import s3_uri
from stock_assets.settings import OUTPUT_KEY, PARQUET_KEY

ROW_GROUP_ROWS = 128 * 1024
# The Parquet object's metadata: which CSV object it was made from.
SOURCE_VERSION_META = "source-csv-version"
SOURCE_FINGERPRINT_META = "source-csv-fingerprint"

_FLOAT = pa.float64()
PARQUET_SCHEMA = pa.schema(
    [
        ("stock_date", pa.date32()),
        ("open_value", _FLOAT),
        ("high_value", _FLOAT),
        ("low_value", _FLOAT),
        ("close_value", _FLOAT),
        ("volume_traded", pa.int64()),
        ("daily_percent_change", _FLOAT),  # null where Open = 0 (an empty field in the CSV)
        ("value_change", _FLOAT),
        ("company_name", pa.string()),
    ]
)
assert PARQUET_SCHEMA.names == OUTPUT_COLUMNS


@dataclass(frozen=True)
class ParquetCopy:
    """What was uploaded: rows, the object's size, and the CSV version it was made from."""

    uri: str
    rows: int
    bytes: int
    row_groups: int
    csv_version: str  # the CSV object's VersionId, or its ETag in an unversioned bucket
    csv_fingerprint: str | None  # the CSV's content fingerprint (its Dagster data version)


def _csv_batches(body: Any) -> pa.RecordBatchReader:
    return pa_csv.open_csv(
        body,
        read_options=pa_csv.ReadOptions(column_names=OUTPUT_COLUMNS),
        # Empty numeric fields become null; company names are never null.
        convert_options=pa_csv.ConvertOptions(
            column_types=PARQUET_SCHEMA, null_values=[""], strings_can_be_null=False
        ),
    )


def _row_groups(batches: Iterable[pa.RecordBatch], rows: int):
    """The batches re-cut into tables of exactly `rows` rows (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending, PARQUET_SCHEMA)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, PARQUET_SCHEMA)


def write_parquet_copy(
    client: Any, bucket: str, row_group_rows: int = ROW_GROUP_ROWS
) -> ParquetCopy:
    """Convert the CSV object in `bucket` to Parquet and upload it next to it."""
    uri = s3_uri(bucket, OUTPUT_KEY)
    try:
        response = client.get_object(Bucket=bucket, Key=OUTPUT_KEY)
    except client.exceptions.NoSuchKey as err:
        raise CsvObjectError(
            f"{uri} is not there to convert: materialise historical_stock_data_csv first"
        ) from err
    meta = response.get("Metadata", {})
    version = response.get("VersionId") or response["ETag"].strip('"')
    rows = groups = 0
    with tempfile.TemporaryFile(suffix=".parquet") as out:
        writer = pq.ParquetWriter(
            out,
            PARQUET_SCHEMA,
            compression="zstd",
            write_page_index=True,
            bloom_filter_options={"company_name": {"ndv": 1000, "fpp": 0.01}},
        )
        with writer:
            # pyarrow refuses an empty CSV; an empty output is an empty copy.
            batches = _csv_batches(response["Body"]) if response["ContentLength"] else []
            for table in _row_groups(batches, row_group_rows):
                writer.write_table(table, row_group_size=row_group_rows)
                rows, groups = rows + table.num_rows, groups + 1
        if ROWS_META in meta and int(meta[ROWS_META]) != rows:
            raise CsvObjectError(f"{uri} says {meta[ROWS_META]} rows but {rows} were read")
        size = out.tell()
        out.seek(0)
        client.put_object(
            Bucket=bucket,
            Key=PARQUET_KEY,
            Body=out,
            ContentLength=size,
            ContentType="application/vnd.apache.parquet",
            Metadata={
                ROWS_META: str(rows),
                SOURCE_VERSION_META: version,
                **(
                    {SOURCE_FINGERPRINT_META: meta[FINGERPRINT_META]}
                    if FINGERPRINT_META in meta
                    else {}
                ),
            },
        )
    return ParquetCopy(
        s3_uri(bucket, PARQUET_KEY), rows, size, groups, version, meta.get(FINGERPRINT_META)
    )
