-- typed_view.sql: the analysts' view of the course's table, the same rows with real types.
--
-- The load runs it inside its own transaction, after the COPY and its checks and before COMMIT,
-- so the view can never disagree with the table. An empty percentage (Open = 0) is NULL.
-- {view} and {table} are filled in with psycopg2's sql.Identifier.
CREATE OR REPLACE VIEW {view} AS
SELECT
    stock_date::date                                     AS stock_date,
    open_value::double precision                         AS open_value,
    high_value::double precision                         AS high_value,
    low_value::double precision                          AS low_value,
    close_value::double precision                        AS close_value,
    volume_traded::bigint                                AS volume_traded,
    NULLIF(daily_percent_change, '')::double precision   AS daily_percent_change,
    value_change::double precision                       AS value_change,
    company_name::text                                   AS company_name
FROM {table};
