"""The Dagster code location: `stock_assets.definitions:defs`."""

from dagster import Definitions, EnvVar, in_process_executor

from stock_assets.assets import (
    historical_stock_data,
    historical_stock_data_parquet,
    raw_stock_files,
)
from stock_assets.jobs import stock_pipeline_job
from stock_assets.resources import (
    DATABASE_URL_ENV,
    PipelineSettings,
    PostgresResource,
    SNSResource,
    StockS3Resource,
)
from stock_assets.sensors import (
    parquet_automation,
    sns_on_pipeline_canceled,
    sns_on_pipeline_failure,
    sns_on_pipeline_success,
    sns_redelivery,
    success_marker_sensor,
)
from stock_assets.sharded import stock_pipeline_sharded_job

defs = Definitions(
    assets=[raw_stock_files, historical_stock_data, historical_stock_data_parquet],
    jobs=[stock_pipeline_job, stock_pipeline_sharded_job],
    sensors=[
        success_marker_sensor,
        sns_on_pipeline_success,
        sns_on_pipeline_failure,
        sns_on_pipeline_canceled,
        sns_redelivery,
        parquet_automation,
    ],
    resources={
        # Endpoint, region and credentials come from boto3's own environment variables.
        "s3": StockS3Resource(),
        # The URL (a secret) is resolved from the environment when a run starts.
        "postgres": PostgresResource(database_url=EnvVar(DATABASE_URL_ENV)),
        "settings": PipelineSettings.from_env(),
        # Topic from the naming convention (STOCK_ASSETS_SNS_TOPIC overrides: a name or an ARN).
        "sns": SNSResource.from_env(),
    },
    executor=in_process_executor,
)
