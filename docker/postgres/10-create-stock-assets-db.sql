-- Runs once, when the postgres container initialises an empty data volume
-- (/docker-entrypoint-initdb.d). POSTGRES_DB (dagster) holds Dagster's own records; the
-- pipeline's table historical_stocks_data lives in a database of its own, as it would on RDS.
CREATE DATABASE stock_assets;
