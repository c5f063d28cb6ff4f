-- pipeline_loads.sql: the load ledger, one row per committed load, written in the load's own
-- transaction (a rolled-back load leaves no row). {ledger} is filled in with sql.Identifier.
CREATE TABLE IF NOT EXISTS {ledger} (
    load_id          bigserial PRIMARY KEY,
    table_name       text        NOT NULL,
    run_id           text        NOT NULL,
    triggered_by     text        NOT NULL,
    started_at       timestamptz NOT NULL,
    committed_at     timestamptz NOT NULL,
    rows_loaded      bigint      NOT NULL,
    files_read       integer,
    files_skipped    integer,
    rows_rejected    integer,
    content_checksum text,
    csv_version      text
);
