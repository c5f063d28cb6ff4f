"""The Dagster code location: `stock_assets.definitions:defs`."""

from dagster import Definitions, EnvVar, in_process_executor
from dagster_aws.s3 import S3Resource

from stock_assets.assets import (
    historical_stock_data_csv,
    historical_stocks_data,
    raw_stock_files,
    top_companies,
)
from stock_assets.jobs import stock_pipeline_job
from stock_assets.resources import PipelineSettings, PostgresResource

defs = Definitions(
    assets=[raw_stock_files, top_companies, historical_stock_data_csv, historical_stocks_data],
    jobs=[stock_pipeline_job],
    resources={
        # Endpoint, region and credentials come from boto3's own environment variables.
        "s3": S3Resource(),
        "postgres": PostgresResource(database_url=EnvVar("STOCK_ASSETS_DATABASE_URL")),
        "settings": PipelineSettings.from_env(),
    },
    executor=in_process_executor,
)
