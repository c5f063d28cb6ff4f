"""The job that runs the whole pipeline: the filter, then the CSV and the table."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from stock_assets.metadata import GROUP, PARQUET

STOCK_PIPELINE_JOB = "stock_pipeline_job"

stock_pipeline_job = define_asset_job(
    STOCK_PIPELINE_JOB,
    # raw_stock_files is observed by the marker sensor (or from the UI), not in the run: the
    # run reads only the files the filter names and never lists Stocks/.
    # The Parquet copy is refreshed by automation after the CSV changes, off the course's path.
    selection=AssetSelection.groups(GROUP) - AssetSelection.assets(PARQUET),
    description="Top-company filter → the files it names under S3 Stocks/ → "
    "Output/historical_stock_data.csv → PostgreSQL historical_stocks_data.",
    # One step, in the run's own process: no process start for it.
    executor_def=in_process_executor,
)
