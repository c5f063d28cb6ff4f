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

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self

from dagster import AssetKey, MetadataValue, TableColumn, TableSchema
from pydantic import BaseModel, ConfigDict

from stock_assets.pipeline.columns import OUTPUT_COLUMNS

RAW_STOCK_FILES = AssetKey("raw_stock_files")
TOP_COMPANIES = AssetKey("top_companies")
CSV = AssetKey("historical_stock_data_csv")
TABLE = AssetKey("historical_stocks_data")
GROUP = "stock_market"

# The course's table: nine VARCHAR(56) columns, in the CSV's order.
TABLE_SCHEMA = TableSchema(columns=[TableColumn(name, "varchar(56)") for name in OUTPUT_COLUMNS])


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
