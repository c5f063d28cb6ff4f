"""The one typed contract for what the assets record and the sensors, `entry` and the CLI read.

Asset keys are declared here once. Materialisation metadata is written and read back through
two typed sets instead of raw strings:

- `TableMetadata`: Dagster's standard `dagster/*` keys (row count, column schema, table name),
  which the UI understands (row count column, schema tab, table lineage);
- `PipelineCounts`: the project's own counters under `stock_assets/*` (files selected/read/
  skipped, rows read/rejected, where the CSV and the rejects are).

Both follow the shape of Dagster's `NamespacedMetadataSet` (splat into `metadata=`, read back
with `.extract()`). Dagster 1.13 keeps that class under `dagster._core` and does not export it
from `dagster`, and this project imports no private Dagster module, so the few lines it needs
live here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar, Self

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DataVersion,
    FreshnessPolicy,
    MetadataValue,
    TableColumn,
    TableSchema,
)
from pydantic import BaseModel, ConfigDict

from stock_assets.pipeline.columns import OUTPUT_COLUMNS
from stock_assets.pipeline.companies import CompanyFilter
from stock_assets.pipeline.ledger import VIEW_COLUMNS, VIEW_NAME, view_name
from stock_assets.pipeline.parquet import PARQUET_SCHEMA, ParquetCopy
from stock_assets.pipeline.quality import markdown_bar_chart
from stock_assets.pipeline.run import CsvOutcome, TableOutcome
from stock_assets.pipeline.s3 import S3Object, listing_fingerprint, s3_uri
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, STOCKS_PREFIX

RAW_STOCK_FILES = AssetKey("raw_stock_files")
TOP_COMPANIES = AssetKey("top_companies")
CSV = AssetKey("historical_stock_data_csv")
TABLE = AssetKey("historical_stocks_data")
VIEW = AssetKey(VIEW_NAME)
GROUP = "stock_market"
# Downstream of the course's pipeline, in its group (the lineage) but left out of
# stock_pipeline_job: kept fresh by Dagster's declarative automation; its runs send no email.
PARQUET = AssetKey("historical_stock_data_parquet")

# The course's table: nine VARCHAR(56) columns, in the CSV's order; the analysts' typed view.
TABLE_SCHEMA = TableSchema(columns=[TableColumn(name, "varchar(56)") for name in OUTPUT_COLUMNS])
VIEW_SCHEMA = TableSchema(columns=[TableColumn(name, t) for name, t in VIEW_COLUMNS.items()])
PARQUET_TABLE_SCHEMA = TableSchema(
    columns=[TableColumn(f.name, str(f.type)) for f in PARQUET_SCHEMA]
)


class _NamespacedSet(BaseModel):
    """Typed fields written as `<namespace>/<field>` metadata entries; None fields are left out."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    namespace: ClassVar[str]

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # `{**set}` gives the entries
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [f"{self.namespace}/{k}" for k, v in self.__dict__.items() if v is not None]

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key.split("/", 1)[1])
        return MetadataValue.json(value) if isinstance(value, (dict, list)) else value

    @classmethod
    def extract(cls, metadata: Mapping[str, Any]) -> Self:
        """The set's fields found in `metadata` (raw values or `MetadataValue`s); others ignored."""
        prefix = f"{cls.namespace}/"
        found = {
            key[len(prefix) :]: getattr(value, "value", value)
            for key, value in metadata.items()
            if key.startswith(prefix) and key[len(prefix) :] in cls.model_fields
        }
        return cls(**found)


class TableMetadata(_NamespacedSet):
    """Dagster's standard table entries (`dagster/row_count`, …)."""

    namespace: ClassVar[str] = "dagster"
    row_count: int | None = None
    column_schema: TableSchema | None = None
    table_name: str | None = None


class PipelineCounts(_NamespacedSet):
    """The pipeline's own counters and locations, as the CSV and the table record them."""

    namespace: ClassVar[str] = "stock_assets"
    files_selected: int | None = None
    files_read: int | None = None
    files_skipped: int | None = None
    rows_read: int | None = None
    rows_rejected: int | None = None
    open_zero_rows: int | None = None
    location: str | None = None
    rejects: dict[str, str] | None = None
    source_run_id: str | None = None
    load_id: int | None = None  # the load's row in pipeline_loads


# The four assets one step makes (`assets.historical_stock_data`).
TOP_COMPANIES_SPEC = AssetSpec(
    TOP_COMPANIES,
    group_name=GROUP,
    kinds={"s3"},
    description="`CompanyNames/top_companies.txt`, parsed and validated into the ordered list "
    "of files to process.",
)
CSV_SPEC = AssetSpec(
    CSV,
    deps=[RAW_STOCK_FILES, TOP_COMPANIES],
    group_name=GROUP,
    kinds={"s3", "csv"},
    description="`Output/historical_stock_data.csv`: the listed companies' rows in filter order, "
    "with daily_percent_change and value_change; no header.",
)
TABLE_SPEC = AssetSpec(
    TABLE,
    deps=[CSV],
    group_name=GROUP,
    kinds={"postgres"},
    # The pipeline runs at most daily: stale (WARN) after ~26 h, i.e. one missed day, failing
    # after two. Dagster's daemon evaluates this; no sensor is needed.
    freshness_policy=FreshnessPolicy.time_window(
        warn_window=timedelta(hours=26), fail_window=timedelta(hours=50)
    ),
    description="PostgreSQL table `historical_stocks_data` (9 × VARCHAR(56)), made equal to the "
    "output CSV by `insert_query.sql` in one transaction.",
)
VIEW_SPEC = AssetSpec(
    VIEW,
    deps=[TABLE],
    group_name=GROUP,
    kinds={"postgres"},
    metadata={**TableMetadata(column_schema=VIEW_SCHEMA)},
    description="PostgreSQL view `historical_stocks`: the table's rows typed for analysts (DATE, "
    "DOUBLE PRECISION, BIGINT, TEXT; NULL percentage where Open = 0), replaced in the load's "
    "own transaction so it never disagrees with the table.",
)


# --- what each asset records -------------------------------------------------------------------


def stocks_observation(objects: list[S3Object], bucket: str) -> dict[str, Any]:
    """raw_stock_files as observed: what is under `Stocks/` (its fingerprint is the data
    version)."""
    largest = max(objects, key=lambda o: o.size, default=None)
    return {
        "files": len(objects),
        "total_bytes": MetadataValue.int(sum(o.size for o in objects)),
        "empty_files": sum(1 for o in objects if o.size == 0),
        "largest_file": f"{largest.name} ({largest.size} bytes)" if largest else "none",
        "listing_fingerprint": listing_fingerprint(objects),
        "location": MetadataValue.url(s3_uri(bucket, STOCKS_PREFIX)),
    }


def filter_metadata(company_filter: CompanyFilter, bucket: str) -> dict[str, Any]:
    """top_companies: what the filter names, and what was dropped from it."""
    return {
        "entries": company_filter.entries,
        "files_selected": len(company_filter.files),
        "duplicates_dropped": len(company_filter.duplicates),
        "invalid_entries": len(company_filter.invalid),
        "first_files": ", ".join(company_filter.files[:10]),
        "location": MetadataValue.url(s3_uri(bucket, FILTER_KEY)),
    }


def csv_metadata(csv: CsvOutcome, bucket: str) -> dict[str, Any]:
    """The CSV's materialisation: counts that reconcile, where things are, a preview."""
    assert csv.combined is not None and csv.csv is not None and csv.profile is not None
    files, skipped = csv.combined.files, csv.skipped
    return {
        **TableMetadata(row_count=csv.csv.rows, column_schema=TABLE_SCHEMA),
        **PipelineCounts(
            files_selected=csv.files_selected,
            files_read=csv.combined.files_read,
            files_skipped=len(skipped),
            rows_read=csv.combined.rows_read,
            rows_rejected=csv.combined.rows_rejected,
            open_zero_rows=sum(f.open_zero_rows for f in files),
            location=s3_uri(bucket, OUTPUT_KEY),
            rejects=csv.rejects,
        ),
        "skipped_files": MetadataValue.md(
            markdown_table(["file", "reason"], [[f.file_name, f.skip_reason] for f in skipped])
            if skipped
            else "none"
        ),
        "companies": len({f.company for f in files if f.rows_written}),
        "bytes_read": sum(f.bytes_read for f in files),
        "reads_retried": csv.reads_retried,  # presigned GETs read again with get_object
        "bytes_written": csv.csv.size,
        "content_fingerprint": csv.csv.fingerprint,
        **{name: round(seconds, 3) for name, seconds in csv.seconds.items()},
        "rows_per_year": MetadataValue.md(
            markdown_bar_chart(dict(sorted(csv.profile.rows_per_year.items())), "year")
        ),
        "preview": MetadataValue.md(
            markdown_table(
                OUTPUT_COLUMNS, [list(r.values()) for r in csv.combined.head.to_pylist()]
            )
        ),
    }


def table_metadata(table: TableOutcome, bucket: str, database: str) -> dict[str, Any]:
    """The table's materialisation: what it holds now and which CSV (and run) it came from."""
    assert table.loaded is not None
    loaded = table.loaded
    return {
        **TableMetadata(
            row_count=loaded.rows_loaded, column_schema=TABLE_SCHEMA, table_name=loaded.table
        ),
        **PipelineCounts(source_run_id=table.source_run_id, load_id=loaded.load_id),
        "rows_before": loaded.rows_before,
        "rows_expected_from_csv": table.expected_rows,
        "source_csv": MetadataValue.url(s3_uri(bucket, OUTPUT_KEY)),
        "database": database,
        "load_seconds": round(loaded.seconds, 3),
        "preview": MetadataValue.md(
            markdown_table(OUTPUT_COLUMNS, [list(r) for r in table.preview])
        ),
    }


def view_metadata(table: TableOutcome | None, table_name: str) -> dict[str, Any]:
    """The typed view: its schema and, after a load, the rows it shows (the table's)."""
    rows = table.loaded.rows_loaded if table is not None and table.loaded is not None else None
    return {
        **TableMetadata(row_count=rows, column_schema=VIEW_SCHEMA, table_name=view_name(table_name))
    }


def parquet_metadata(copy: ParquetCopy) -> dict[str, Any]:
    """The Parquet copy: rows, size, schema and the CSV object version it was made from."""
    return {
        **TableMetadata(row_count=copy.rows, column_schema=PARQUET_TABLE_SCHEMA),
        **PipelineCounts(location=copy.uri),
        "bytes": MetadataValue.int(copy.bytes),
        "row_groups": copy.row_groups,
        "source_csv_version": copy.csv_version,
        "source_csv_fingerprint": copy.csv_fingerprint or "unknown",
    }


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(md_text(v) for v in row) + " |" for row in rows])


def md_text(value: Any) -> str:
    """`value` as plain text in the UI's Markdown: a file's header or a file name echoed in a
    reason must not become a link, an image, HTML or another table cell."""
    text = " ".join(str(value).splitlines())
    text = re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)
    # The UI's Markdown (GitHub's flavour) also links bare URLs: break their pattern.
    return re.sub(
        r"(?i)(https?|ftp)://|www\.", lambda m: m[0].replace(":", "\\:").replace(".", "\\."), text
    )


def asset_materializations(result: Any, asset: str) -> list[AssetMaterialization]:
    """The materialisations of `asset` in a job's in-process result (one step can make several
    assets, so looking them up by step name is not enough)."""
    key = AssetKey(asset)
    return [
        event.materialization
        for event in result.get_asset_materialization_events()
        if event.asset_key == key
    ]


def data_version_tags(version: DataVersion | None) -> dict[str, str] | None:
    """The tags an asset step writes for its data version (lineage and staleness read them),
    for an op that records an asset's materialisation itself (the sharded job's steps). Dagster
    keeps their names in a private module, so they are spelled here."""
    if version is None:
        return None
    return {"dagster/data_version": version.value, "dagster/data_version_is_user_provided": "true"}
