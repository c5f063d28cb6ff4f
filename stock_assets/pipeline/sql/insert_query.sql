-- insert_query.sql: make historical_stocks_data equal to Output/historical_stock_data.csv.
--
-- The pipeline runs these two statements inside ONE transaction, followed by its in-transaction
-- checks (row count and content checksum equal the CSV's, no duplicate (company_name,
-- stock_date)); COMMIT happens
-- only if they pass. So after success the table holds exactly the CSV's rows, and after any
-- failure it is exactly as it was. Re-running replaces, never duplicates.
--
-- TRUNCATE + COPY in one transaction is the cheapest correct shape: no second copy of the rows
-- (a staging table would cost another full write), no per-row index maintenance, and when the
-- server runs with wal_level=minimal PostgreSQL skips WAL for rows copied into a table truncated
-- in the same transaction. Readers wait on the table's lock for the seconds the load takes.
--
-- FREEZE, allowed because the table was truncated in this transaction: the rows are written
-- already frozen. Without it, readers looked up every row's transaction until a VACUUM had run
-- (the first full scan after a load was about three times slower: benchmarks/results/README.md),
-- and autovacuum then had the whole table to process. It relaxes MVCC only as far as TRUNCATE already does (a
-- transaction whose snapshot predates the commit sees the new rows).
--
-- {table} is filled in with psycopg2's sql.Identifier; the COPY reads the CSV from the client.
TRUNCATE TABLE {table};
COPY {table} (
    stock_date, open_value, high_value, low_value, close_value,
    volume_traded, daily_percent_change, value_change, company_name
) FROM STDIN WITH (FORMAT csv, HEADER false, NULL '', FREEZE true);
