-- The course's table: nine text columns, each VARCHAR(56) NULL.
-- {table} is filled in with psycopg2's sql.Identifier, never by string formatting.
CREATE TABLE IF NOT EXISTS {table} (
    stock_date           VARCHAR(56) NULL,
    open_value           VARCHAR(56) NULL,
    high_value           VARCHAR(56) NULL,
    low_value            VARCHAR(56) NULL,
    close_value          VARCHAR(56) NULL,
    volume_traded        VARCHAR(56) NULL,
    daily_percent_change VARCHAR(56) NULL,
    value_change         VARCHAR(56) NULL,
    company_name         VARCHAR(56) NULL
);
