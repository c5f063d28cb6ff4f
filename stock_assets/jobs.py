"""The job that runs the whole pipeline: observe the raw files, then materialise the rest."""

from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    define_asset_job,
    in_process_executor,
)

STOCK_PIPELINE_JOB = "stock_pipeline_job"

stock_pipeline_job = define_asset_job(
    STOCK_PIPELINE_JOB,
    # include_sources: the observable raw_stock_files is observed in the same run.
    selection=AssetSelection.groups("stock_market", include_sources=True),
    description="S3 Stocks/ → top-company filter → Output/historical_stock_data.csv → "
    "PostgreSQL historical_stocks_data.",
    # The steps are light and sequential; one process avoids a process start per step.
    executor_def=in_process_executor,
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
