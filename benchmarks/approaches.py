"""The three contenders, each run in a fresh child process by `benchmarks.worker`.

- `ours`: stock_pipeline_job through Dagster (`execute_in_process`, the job's in-process
  executor, a SQLite Dagster instance), timed from the event log.
- `limit`: the machine's limit proxy. Parallel raw GETs (presigned URLs over one urllib3 pool),
  the same transformation in the fastest plain code we could write (one Arrow parse per batch of
  files, no validation, no reject bookkeeping), then TRUNCATE + COPY into an unindexed table in
  one transaction. No S3 upload of the result and no checks: only what any correct solution must
  do. It shares no code with the pipeline, so its output is an independent check of ours.
- `course`: what public course submissions do: sequential `get_object` + `pd.read_csv` per file,
  `pd.concat`, `to_csv`, upload, then `executemany` INSERTs row by row, stopped at a time budget
  and extrapolated from the rows done.
- `duckdb`: the engine the architecture issue weighs against today's pyarrow path: DuckDB reads
  the filter's files from S3 (httpfs), types and rejects rows (`store_rejects` for what does not
  parse, SQL rules for the rest), computes the two derived columns, writes the CSV to S3 with
  `COPY … TO 's3://…'` and loads the table through its postgres extension in one transaction.

Each returns a JSON-able dict of timings; `worker` adds process start time and peak RSS. The
peers (dlt, Sling) and ours as a user runs it (`dagster job execute`) are in `peers.py` and
`run.py`: they run as processes of their own, not in a worker.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

COLUMNS_SQL = ", ".join(
    f"{name} VARCHAR(56) NULL"
    for name in [
        "stock_date", "open_value", "high_value", "low_value", "close_value",
        "volume_traded", "daily_percent_change", "value_change", "company_name",
    ]
)  # fmt: skip
FILTER_KEY = "CompanyNames/top_companies.txt"
OUTPUT_KEY = "Output/historical_stock_data.csv"


def _filter_names(text: str) -> list[str]:
    names = [entry.strip().strip("'\"").strip() for entry in re.split(r"[,\n]", text)]
    return list(dict.fromkeys(name for name in names if name))


def _database_url() -> str:
    from stock_assets.database import psycopg2_dsn

    return psycopg2_dsn(os.environ["STOCK_ASSETS_DATABASE_URL"])


# --- ours -----------------------------------------------------------------------------------


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    from dagster import DagsterInstance

    from benchmarks.worker import hwm_bytes
    from stock_assets.definitions import defs
    from stock_assets.jobs import STOCK_PIPELINE_JOB
    from stock_assets.metadata import PipelineCounts, TableMetadata, asset_materializations

    ready, ready_cpu = time.time(), time.process_time()
    instance = DagsterInstance.get()
    job = defs.resolve_job_def(STOCK_PIPELINE_JOB)
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, run_config=spec.get("run_config") or {}, raise_on_error=False
    )
    run_seconds = time.perf_counter() - started
    peak_rss = hwm_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    steps: dict[str, dict[str, float]] = {}
    first = last = None
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if kind == "RUN_START" or (kind == "PIPELINE_START"):
            first = entry.timestamp
        if kind in ("RUN_SUCCESS", "RUN_FAILURE"):
            last = entry.timestamp
        if event.step_key and kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            steps.setdefault(event.step_key, {})[kind] = entry.timestamp
    per_step = {
        key: round(times.get("STEP_SUCCESS", times.get("STEP_FAILURE", 0)) - times["STEP_START"], 4)
        for key, times in steps.items()
        if "STEP_START" in times
    }
    # The numeric entries of each materialisation (timings, plain counters such as bytes_read);
    # the project's counters are read through the typed sets, not by their key strings.
    metadata: dict[str, dict[str, float]] = {}
    counts, table_meta = PipelineCounts(), TableMetadata()
    for node in ("historical_stock_data_csv", "historical_stocks_data"):
        materializations = asset_materializations(result, node) if result.success else []
        if materializations:
            entries = materializations[0].metadata
            metadata[node] = {
                k: v.value
                for k, v in entries.items()
                if isinstance(v.value, int | float) and not isinstance(v.value, bool)
            }
            if node == "historical_stock_data_csv":
                counts, table_meta = PipelineCounts.extract(entries), TableMetadata.extract(entries)
    failure = None
    if not result.success:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                failure = str(event.event_specific_data.error.message)[:2000]
                break
    csv_meta = metadata.get("historical_stock_data_csv", {})
    return {
        "success": result.success,
        "failure": failure,
        "run_id": result.run_id,
        "ready_at": ready,
        "ready_cpu_seconds": ready_cpu,
        "run_seconds": round(run_seconds, 4),
        "peak_rss_bytes": peak_rss,
        "step_seconds": per_step,
        "run_start_to_end_seconds": round(last - first, 4) if first and last else None,
        "asset_metadata": metadata,
        "rows_written": table_meta.row_count,
        "rows_read": counts.rows_read,
        "rows_rejected": counts.rows_rejected,
        "files_read": counts.files_read,
        "files_skipped": counts.files_skipped,
        "companies": csv_meta.get("companies"),
        "bytes_read": csv_meta.get("bytes_read"),
    }


# --- limit proxy ----------------------------------------------------------------------------


def _limit_transform(names: list[str], bodies: list[bytes]) -> Any:
    """The spec's transformation for a batch of raw files, as plainly fast as we can write it.

    Output text rules (Python's repr for floats) are met the cheap way: prices and volumes are
    written like repr in the source almost always, so those are kept as text and only the rest is
    formatted; the two computed columns are formatted by Arrow and patched where Arrow's notation
    differs from repr (".0" on whole numbers, exponents).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pv

    parts, companies, counts = [], [], []
    for name, body in zip(names, bodies, strict=True):
        start = body.find(b"\n") + 1
        if start == 0 or start == len(body):
            continue  # empty file or header only
        data = memoryview(body)[start:]
        parts.append(data)
        if not body.endswith(b"\n"):
            parts.append(b"\n")
        counts.append(body.count(b"\n", start) + (not body.endswith(b"\n")))
        companies.append(name.split(".", 1)[0])
    if not parts:
        return None
    used = ["Date", "Open", "High", "Low", "Close", "Volume"]
    raw = pv.read_csv(
        io.BytesIO(b"".join(parts)),
        read_options=pv.ReadOptions(column_names=[*used, "OpenInt"]),
        convert_options=pv.ConvertOptions(
            column_types=dict.fromkeys(used, pa.string()), include_columns=used
        ),
    ).combine_chunks()

    def arr(name: str) -> pa.Array:
        column = raw[name]
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    def string_bytes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.frombuffer(text.buffers()[1], np.int32)
        offsets = offsets[text.offset : text.offset + len(text) + 1]
        return offsets, np.frombuffer(text.buffers()[2], np.uint8)

    def fmt(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
        array = pa.array(values, mask=null)
        text = pc.cast(array, pa.string())
        offsets, chars = string_bytes(text)
        e_positions = np.flatnonzero(chars[: offsets[-1]] == ord("e"))
        exp_rows = np.searchsorted(offsets, e_positions, "right") - 1
        with np.errstate(invalid="ignore"):
            m = np.abs(values)
            special = ((m < 1e-4) & (m != 0)) | (m >= 1e16)
            special[exp_rows] = True
            if null is not None:
                special &= ~null
            whole = ~special & (np.floor(values) == values)
        if whole.any():
            mask = pa.array(whole)
            text = pc.replace_with_mask(
                text, mask, pc.binary_join_element_wise(text.filter(mask), ".0", "")
            )
        if special.any():
            text = pc.replace_with_mask(
                text, pa.array(special), pa.array([repr(x) for x in values[special].tolist()])
            )
        return text

    def price_text(text: pa.Array, values: np.ndarray) -> pa.Array:
        offsets, chars = string_bytes(text)
        s, e = offsets[:-1], offsets[1:]
        top = len(chars) - 1
        c0, c1 = chars[s], chars[np.minimum(s + 1, top)]
        cz, cy = chars[e - 1], chars[np.maximum(e - 2, 0)]
        whole = np.floor(values) == values
        keep = (
            (e - s >= 3) & (e - s <= 16) & ((values >= 1e-4) | (values == 0)) & (c0 != 46)
            & ((c0 != 48) | (c1 == 46)) & (cz != 46) & ((cz != 48) | (cy == 46))
            & (~whole | ((cz == 48) & (cy == 46)))
        )  # fmt: skip
        if keep.all():
            return text
        redo = pa.array(~keep)
        return pc.replace_with_mask(text, redo, fmt(values[~keep]))

    floats = {c: pc.cast(arr(c), pa.float64()).to_numpy() for c in ["Open", "High", "Low", "Close"]}
    volume_text = arr("Volume")
    v_offsets, v_chars = string_bytes(volume_text)
    if not ((v_chars[v_offsets[:-1]] != 48) | (np.diff(v_offsets) == 1)).all():
        volume_text = pc.cast(pc.cast(volume_text, pa.int64()), pa.string())
    change = floats["Close"] - floats["Open"]
    open_zero = floats["Open"] == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = change / floats["Open"] * 100.0
    company = pa.array(companies).take(pa.array(np.repeat(np.arange(len(counts)), counts)))
    return pa.table(
        [
            arr("Date"),
            *(price_text(arr(c), floats[c]) for c in ["Open", "High", "Low", "Close"]),
            volume_text,
            fmt(percent, open_zero if open_zero.any() else None),
            fmt(change),
            company,
        ],
        names=[
            "stock_date", "open_value", "high_value", "low_value", "close_value",
            "volume_traded", "daily_percent_change", "value_change", "company_name",
        ],
    )  # fmt: skip


def run_limit(spec: dict[str, Any]) -> dict[str, Any]:
    import boto3
    import psycopg2
    import pyarrow as pa
    import pyarrow.csv as pv
    import urllib3
    from botocore.config import Config

    ready, ready_cpu = time.time(), time.process_time()
    bucket, workers = spec["bucket"], int(spec.get("workers", 16))
    table = spec.get("table", "bench_limit_stocks")
    started = time.perf_counter()
    client = boto3.client("s3", config=Config(max_pool_connections=workers))
    names = _filter_names(client.get_object(Bucket=bucket, Key=FILTER_KEY)["Body"].read().decode())
    urls = [
        client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": f"Stocks/{name}"}, ExpiresIn=900
        )
        for name in names
    ]
    http = urllib3.PoolManager(maxsize=workers, retries=urllib3.Retry(3))

    def get(url: str) -> bytes:
        response = http.request("GET", url)
        return response.data if response.status == 200 else b""

    tables, batch_names, batch_bodies, batch_bytes, bytes_read = [], [], [], 0, 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Transform batches of ~8 MB as they arrive, while the pool keeps downloading.
        for name, body in zip(names, pool.map(get, urls), strict=True):
            batch_names.append(name)
            batch_bodies.append(body)
            batch_bytes += len(body)
            bytes_read += len(body)
            if batch_bytes >= 8 << 20:
                tables.append(_limit_transform(batch_names, batch_bodies))
                batch_names, batch_bodies, batch_bytes = [], [], 0
        tables.append(_limit_transform(batch_names, batch_bodies))
    get_transform_seconds = time.perf_counter() - started
    mark = time.perf_counter()
    result = pa.concat_tables([t for t in tables if t is not None])
    sink = io.BytesIO()
    pv.write_csv(result, sink, pv.WriteOptions(include_header=False, quoting_style="none"))
    body = sink.getvalue()
    csv_seconds = time.perf_counter() - mark

    mark = time.perf_counter()
    conn = psycopg2.connect(_database_url())
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({COLUMNS_SQL})")
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE TABLE {table}")
        cur.copy_expert(
            f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER false, NULL '')",
            io.BytesIO(body),
            size=1 << 20,
        )
        loaded = cur.rowcount
    conn.close()
    copy_seconds = time.perf_counter() - mark
    total = time.perf_counter() - started
    return {
        "success": loaded == result.num_rows,
        "ready_at": ready,
        "ready_cpu_seconds": ready_cpu,
        "run_seconds": round(total, 4),
        "phases": {
            "get_and_transform_seconds": round(get_transform_seconds, 4),
            "csv_seconds": round(csv_seconds, 4),
            "copy_seconds": round(copy_seconds, 4),
        },
        "rows_written": result.num_rows,
        "rows_loaded": loaded,
        "bytes_read": bytes_read,
        "csv_bytes": len(body),
        "csv_sha256": hashlib.sha256(body).hexdigest(),
    }


# --- DuckDB engine --------------------------------------------------------------------------

DUCKDB_OUTPUT_KEY = "Output/duckdb_historical_stock_data.csv"
DUCKDB_REJECTS_KEY = "Output/duckdb_rejects.csv"
# Typed on reading: a value that does not parse as its type is a reject with DuckDB's reason.
_DUCKDB_COLUMNS = {
    "Date": "DATE", "Open": "DOUBLE", "High": "DOUBLE", "Low": "DOUBLE", "Close": "DOUBLE",
    "Volume": "BIGINT", "OpenInt": "BIGINT",
}  # fmt: skip
_DUCKDB_OUTPUT = [
    "stock_date", "open_value", "high_value", "low_value", "close_value",
    "volume_traded", "daily_percent_change", "value_change", "company_name",
]  # fmt: skip
# The rows DuckDB's casts accept but the pipeline rejects (validate.py), in SQL; the first rule
# a row breaks is its reason. Still more lenient than validate.py: DuckDB's DOUBLE and BIGINT
# also take a sign, an exponent ("1e5") and "5.0" for a volume.
_DUCKDB_PROBLEM = """CASE
    WHEN NOT (isfinite(Open) AND isfinite(High) AND isfinite(Low) AND isfinite(Close))
        THEN 'a price is not a finite number'
    WHEN least(Open, High, Low, Close) < 0 THEN 'a price is negative'
    WHEN Volume < 0 THEN 'Volume is negative'
    WHEN NOT isfinite(Close - Open) OR (Open <> 0 AND NOT isfinite((Close - Open) / Open * 100))
        THEN 'a price, or the change or percentage computed from it, overflows a double'
END"""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def run_duckdb(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    import duckdb
    import duckdb_extensions

    ready, ready_cpu = time.time(), time.process_time()
    bucket = spec["bucket"]
    table = spec.get("table", "bench_duckdb_stocks")
    started = time.perf_counter()
    con = duckdb.connect(
        config={
            # Nothing fetched from the network: the extensions come from their PyPI wheels.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # Remote reads wait on the server: about 4× the cores was fastest (FIELD-NOTES).
            "threads": int(spec.get("threads", 4 * (os.cpu_count() or 1))),
        }
    )
    con.execute("SET enable_progress_bar = false")  # its bar would go to the worker's stdout
    if spec.get("memory_limit"):  # e.g. "400MB": DuckDB spills to disk beyond it
        con.execute(f"SET memory_limit = {_sql_text(spec['memory_limit'])}")
    for extension in ("httpfs", "postgres"):
        duckdb_extensions.import_extension(extension, con=con)
        con.execute(f"LOAD {extension}")
    endpoint = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    con.execute(
        f"""CREATE SECRET bench_s3 (
            TYPE s3, KEY_ID {_sql_text(os.environ["AWS_ACCESS_KEY_ID"])},
            SECRET {_sql_text(os.environ["AWS_SECRET_ACCESS_KEY"])},
            REGION {_sql_text(os.environ.get("AWS_REGION", "eu-west-1"))},
            ENDPOINT {_sql_text(endpoint.netloc)}, URL_STYLE 'path',
            USE_SSL {"true" if endpoint.scheme == "https" else "false"})"""
    )
    # One GET per file: by default httpfs sends a HEAD first (size, then ranged GETs), which
    # doubles the requests; on moto that was 4.4 instead of 2.4 CPU-s for the 1,000 files.
    con.execute("SET force_download = true")
    filter_text = con.execute(
        f"SELECT content FROM read_text({_sql_text(f's3://{bucket}/{FILTER_KEY}')})"
    ).fetchone()[0]
    names = _filter_names(filter_text)
    urls = [f"s3://{bucket}/Stocks/{name}" for name in names]
    setup_seconds = time.perf_counter() - started

    # Read, type, derive and judge in one pass; with preserve_insertion_order (the default) the
    # rows keep the list's order, then each file's, which the output's order is.
    mark = time.perf_counter()
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _DUCKDB_COLUMNS.items()) + "}"
    percent = "(Close - Open) / Open * 100"
    con.execute(
        f"""CREATE TABLE output AS SELECT
            Date::VARCHAR AS stock_date, Open::VARCHAR AS open_value,
            High::VARCHAR AS high_value, Low::VARCHAR AS low_value,
            Close::VARCHAR AS close_value, Volume::VARCHAR AS volume_traded,
            CASE WHEN Open <> 0 THEN ({percent})::VARCHAR END AS daily_percent_change,
            (Close - Open)::VARCHAR AS value_change,
            split_part(parse_filename(filename), '.', 1) AS company_name,
            {_DUCKDB_PROBLEM} AS problem
        FROM read_csv($urls, filename = true, auto_detect = false, header = true,
                      delim = ',', quote = '"', columns = {columns}, store_rejects = true)""",
        {"urls": urls},
    )
    read_transform_seconds = time.perf_counter() - mark

    mark = time.perf_counter()
    duplicates = con.execute(
        """SELECT count(*) FROM (SELECT 1 FROM output WHERE problem IS NULL
           GROUP BY company_name, stock_date HAVING count(*) > 1)"""
    ).fetchone()[0]
    if duplicates:  # the first row of a (company, date) wins, as in validate.py
        con.execute(
            """UPDATE output SET problem = 'duplicate (company_name, stock_date)'
               WHERE rowid IN (SELECT rowid FROM (
                   SELECT rowid, row_number() OVER (
                       PARTITION BY company_name, stock_date ORDER BY rowid) AS n
                   FROM output WHERE problem IS NULL) WHERE n > 1)"""
        )
    rows_parsed, rows_ruled_out = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE problem IS NOT NULL) FROM output"
    ).fetchone()
    unparsed = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT scan_id, file_id, line FROM reject_errors)"
    ).fetchone()[0]
    companies = {
        row[0]
        for row in con.execute(
            "SELECT DISTINCT company_name FROM output WHERE problem IS NULL"
        ).fetchall()
    }
    if unparsed or rows_ruled_out:  # kept where a person can look, with the reason
        con.execute(
            f"""COPY (
                SELECT s.file_path AS file, e.line, e.error_message AS reason, e.csv_line AS row
                FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id)
                UNION ALL
                SELECT company_name, NULL, problem, concat_ws(',', {", ".join(_DUCKDB_OUTPUT)})
                FROM output WHERE problem IS NOT NULL
            ) TO {_sql_text(f"s3://{bucket}/{DUCKDB_REJECTS_KEY}")} (FORMAT csv, HEADER true)"""
        )
    checks_seconds = time.perf_counter() - mark

    # The CSV upload and the table load both only read `output`: run them side by side, each on
    # its own cursor (DuckDB releases the GIL), as the pipeline overlaps its upload and COPY.
    selected = f"SELECT {', '.join(_DUCKDB_OUTPUT)} FROM output WHERE problem IS NULL"
    con.execute(f"ATTACH {_sql_text(_database_url())} AS pg (TYPE postgres)")
    create = f"CREATE TABLE IF NOT EXISTS {table} ({COLUMNS_SQL})"
    con.execute(f"CALL postgres_execute('pg', {_sql_text(create)})")

    def write_csv() -> float:
        begun = time.perf_counter()
        con.cursor().execute(
            f"COPY ({selected}) TO {_sql_text(f's3://{bucket}/{DUCKDB_OUTPUT_KEY}')} "
            "(FORMAT csv, HEADER false)"
        )
        return time.perf_counter() - begun

    def load_table(cursor: Any) -> tuple[float, int]:
        begun = time.perf_counter()
        # TRUNCATE and the INSERT (binary COPY underneath) share one PostgreSQL transaction.
        cursor.execute(f"CALL postgres_execute('pg', 'TRUNCATE {table}')")
        loaded = cursor.execute(f"INSERT INTO pg.public.{table} {selected}").fetchone()[0]
        return time.perf_counter() - begun, int(loaded)

    mark = time.perf_counter()
    load_cursor = con.cursor()
    load_cursor.execute("BEGIN")
    with ThreadPoolExecutor(max_workers=2 if spec.get("overlap", True) else 1) as pool:
        csv_future, load_future = pool.submit(write_csv), pool.submit(load_table, load_cursor)
        try:
            csv_seconds = csv_future.result()
            load_seconds, loaded = load_future.result()
        except BaseException:
            load_future.exception()  # the load has stopped before its transaction is undone
            load_cursor.execute("ROLLBACK")
            raise
    # Committed only once the CSV is in S3: a failed run leaves the table as it was (the spec).
    load_cursor.execute("COMMIT")
    write_load_seconds = time.perf_counter() - mark
    total = time.perf_counter() - started
    rows_written = rows_parsed - rows_ruled_out
    con.close()
    return {
        "success": loaded == rows_written,
        "ready_at": ready,
        "ready_cpu_seconds": ready_cpu,
        "run_seconds": round(total, 4),
        "phases": {
            "setup_seconds": round(setup_seconds, 4),
            "read_transform_seconds": round(read_transform_seconds, 4),
            "rejects_seconds": round(checks_seconds, 4),
            "write_and_load_seconds": round(write_load_seconds, 4),
        },
        "csv_write_seconds": round(csv_seconds, 4),
        "table_load_seconds": round(load_seconds, 4),
        "files_selected": len(names),
        "files_without_rows": sorted({name.split(".", 1)[0] for name in names} - companies),
        "companies": len(companies),
        "rows_read": rows_parsed + unparsed,
        "rows_rejected": rows_ruled_out + unparsed,
        "rows_written": rows_written,
        "rows_loaded": loaded,
        "duplicate_keys": duplicates,
        "output_key": DUCKDB_OUTPUT_KEY,
        "table": table,
        "duckdb_version": duckdb.__version__,
    }


# --- course approach ------------------------------------------------------------------------


def run_course(spec: dict[str, Any]) -> dict[str, Any]:
    import boto3
    import pandas as pd
    import psycopg2

    ready, ready_cpu = time.time(), time.process_time()
    bucket = spec["bucket"]
    budget = float(spec.get("insert_budget_seconds", 30.0))
    table = spec.get("table", "bench_course_stocks")
    started = time.perf_counter()
    s3 = boto3.client("s3")
    names = _filter_names(s3.get_object(Bucket=bucket, Key=FILTER_KEY)["Body"].read().decode())
    frames = []
    for name in names:  # one file after the other, as the course's notebooks do
        obj = s3.get_object(Bucket=bucket, Key=f"Stocks/{name}")
        try:
            df = pd.read_csv(obj["Body"])
        except pd.errors.EmptyDataError:
            continue
        df = df.drop(columns=["OpenInt"])
        df["daily_percent_change"] = (df["Close"] - df["Open"]) / df["Open"] * 100
        df["value_change"] = df["Close"] - df["Open"]
        df["company_name"] = name.split(".")[0]
        frames.append(df)
    read_seconds = time.perf_counter() - started

    mark = time.perf_counter()
    data = pd.concat(frames, ignore_index=True)
    concat_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    text = data.to_csv(index=False, header=False)
    to_csv_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    s3.put_object(Bucket=bucket, Key="Output/course_historical_stock_data.csv", Body=text.encode())
    upload_seconds = time.perf_counter() - mark

    mark = time.perf_counter()
    rows = list(csv.reader(io.StringIO(text)))
    conn = psycopg2.connect(_database_url())
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({COLUMNS_SQL})")
        cur.execute(f"TRUNCATE TABLE {table}")
    insert = f"INSERT INTO {table} VALUES ({', '.join(['%s'] * 9)})"
    done = 0
    insert_started = time.perf_counter()
    with conn, conn.cursor() as cur:
        while done < len(rows) and time.perf_counter() - insert_started < budget:
            cur.executemany(insert, rows[done : done + 1000])
            done += len(rows[done : done + 1000])
    insert_seconds = time.perf_counter() - insert_started
    conn.close()
    load_prep_seconds = insert_started - mark
    total_rows = len(rows)
    extrapolated_insert = insert_seconds * total_rows / done if done else None
    measured = time.perf_counter() - started
    finished = done == total_rows
    return {
        "success": True,
        "ready_at": ready,
        "ready_cpu_seconds": ready_cpu,
        "phases": {
            "sequential_get_read_csv_seconds": round(read_seconds, 4),
            "concat_seconds": round(concat_seconds, 4),
            "to_csv_seconds": round(to_csv_seconds, 4),
            "upload_seconds": round(upload_seconds, 4),
            "load_prepare_seconds": round(load_prep_seconds, 4),
            "insert_seconds_measured": round(insert_seconds, 4),
        },
        "insert_budget_seconds": budget,
        "rows_written": total_rows,
        "rows_inserted": done,
        "insert_finished": finished,
        "insert_rows_per_second": round(done / insert_seconds, 1) if insert_seconds else None,
        "measured_seconds": round(measured, 4),
        # The inserts that did not fit the budget, at the rate measured for those that did.
        "run_seconds": round(
            measured if finished else measured - insert_seconds + (extrapolated_insert or 0), 4
        ),
        "extrapolated": not finished,
        "csv_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


APPROACHES = {"ours": run_ours, "limit": run_limit, "duckdb": run_duckdb, "course": run_course}
