"""The peers: the tools a data engineer would pick instead of this platform, doing the same job.

Each loads the files the filter names (`CompanyNames/top_companies.txt` → `Stocks/<name>`) from
the benchmark's S3 bucket into its own table in the same PostgreSQL, with the spec's two derived
columns (`value_change = Close - Open`, `daily_percent_change`, NULL where Open = 0) and the
company name, configured the way its documentation recommends for speed. The benchmark runs each
as a whole process (spawn to exit, like `dagster job execute` for ours) and checks its table
against ours with SQL (`verify_table`).

- dlt (`python -m benchmarks.peers dlt SPEC`, run by the peers' own venv: dlt's `s3fs` pins an
  older botocore than the project's, so it cannot share `.venv`; see `PEERS_VENV`).
- Sling (`python -m benchmarks.peers sling SPEC`, run by the project's venv: a small driver reads
  the filter with boto3, writes Sling's task file and runs the binary of the wheel
  `sling-linux-amd64`, by path: the `sling` wrapper would download a binary at first use).

Nothing here is imported by the pipeline; this module imports only the standard library at
module level, so the peers' venv (without the project's dependencies) can run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from benchmarks.approaches import FILTER_KEY, _filter_names
from benchmarks.worker import MARKER

BENCH_DIR = Path(__file__).resolve().parent
# dlt[filesystem] needs s3fs → aiobotocore, which pins botocore below the version the project's
# boto3 needs (pip would downgrade botocore in `.venv`), so dlt gets a venv of its own, built on
# demand (git-ignored). Pinned: the figures are for these versions.
PEERS_VENV = BENCH_DIR / ".peers-venv"
PEERS_REQUIREMENTS = [
    "dlt[filesystem,postgres,parquet]==1.31.0",  # parquet: pyarrow, for the reader and loader
    "adbc-driver-postgresql==1.13.0",
]
_PEERS_VENV_READY = PEERS_VENV / ".installed"  # written last: a half-built venv is not used
DLT_SCHEMA = "bench_dlt"
SLING_SCHEMA = "bench_sling"
TABLE = "historical_stocks_data"
PEER_TABLES = {"dlt": f"{DLT_SCHEMA}.{TABLE}", "sling": f"{SLING_SCHEMA}.{TABLE}"}
SLING_RAW_TABLE = f"{SLING_SCHEMA}.stocks_raw"
# Telemetry off and nothing fetched at run time.
DLT_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false"}
SLING_ENV = {"SLING_DISABLE_TELEMETRY": "true"}

# What each peer is told to do, and what it does not do that ours does: the report prints these.
PEER_NOTES: dict[str, dict[str, Any]] = {
    "ours_cli": {
        "label": "ours (`dagster job execute`)",
        "configuration": [
            "`dagster job execute -m stock_assets.definitions -j stock_pipeline_job`, "
            "DAGSTER_HOME = the benchmark's instance (SQLite storage, telemetry off), the job's "
            "own in-process executor and default settings (8 parallel GETs)",
        ],
        "skips": [],
    },
    "duckdb": {
        "label": "DuckDB engine",
        "configuration": [
            "DuckDB 1.5.5, `httpfs` and `postgres` extensions from their PyPI wheels (no "
            "download), `threads` = 4 × cores, `force_download` (one GET per file, no HEAD)",
            "`read_csv([...urls], filename = true, auto_detect = false, columns = {...}, "
            "store_rejects = true)` typed on reading; derived columns and the spec's rules in "
            "SQL; the CSV written to S3 with `COPY … TO 's3://…'` while the table is loaded "
            "through the postgres extension (TRUNCATE + INSERT, binary COPY underneath) in "
            "one transaction committed after the upload",
            "run by `python -m benchmarks.worker` (the process includes the worker's imports)",
        ],
        "skips": [
            "none of the 13 checks of the CSV and the table (format, OHLC consistency, zero "
            "volume, rows per year, content checksum of the table against the CSV, …)",
            "rule rejects are kept without line numbers or raw text; laxer number formats "
            "(a sign, an exponent, `5.0` for a volume)",
            "no load ledger, no typed view, no Dagster run record or asset metadata",
        ],
    },
    "dlt": {
        "label": "dlt",
        "configuration": [
            "dlt 1.31.0 (`dlt[filesystem,postgres,parquet]`, `adbc-driver-postgresql` "
            "1.13.0) in its own venv (`benchmarks/.peers-venv`)",
            "source: `filesystem(bucket_url='s3://<bucket>/Stocks', file_glob='*', "
            "files_per_page=10)` with `add_filter` keeping the names the filter file lists "
            "(read first with dlt's fsspec client); the docs' *create your own reader* pattern: "
            "a `@dlt.transformer(parallelized=True)` that opens each file (`file_obj.open()`) "
            "and parses it with `pyarrow.csv.read_csv` into typed Arrow columns, adds "
            "`value_change`, `daily_percent_change` and `company_name` with `pyarrow.compute`, "
            "and yields one Arrow table per file",
            "`extract.workers` = 16 (parallel transformer pages; 12.6 s against 14.3 s with the "
            "default 5 on the 1,000 files), `loader_file_format='parquet'` (loaded by ADBC, the "
            "postgres destination's fast path for Arrow data), `write_disposition='replace'` "
            "(its default truncate-and-insert strategy), telemetry off",
            "destination table `bench_dlt.historical_stocks_data` (date, double precision, "
            "bigint, varchar)",
        ],
        "skips": [
            "lists the whole `Stocks/` prefix (the filesystem source globs) and then HEADs and "
            "GETs each listed file it keeps",
            "no validation: a row that does not parse fails the whole run (pyarrow), nothing is "
            "kept as a reject with a reason; empty files are passed over silently",
            "no CSV published in S3, no checks, no typed view over the course's table",
            "replace is truncate-and-insert: the table is truncated before the data is loaded, "
            "not replaced in one transaction (a failed load leaves it empty or partial; dlt's "
            "staging strategies would swap it in, at the cost of another copy)",
            "its own load records (`_dlt_loads`, pipeline state) instead of the ledger",
        ],
    },
    "sling": {
        "label": "Sling",
        "configuration": [
            "Sling 1.4.11, the binary of the wheel `sling-linux-amd64` called by path "
            "(`SLING_DISABLE_TELEMETRY=true`, its home in the benchmark's folder: nothing "
            "downloaded)",
            "a Python driver reads the filter with boto3 and writes a task config: "
            "`source.conn` = the S3 connection (endpoint = moto), `source.files` = the listed "
            "files' URLs (a replication stream's `files:` is ignored in 1.4.11), "
            "`format: csv`; `target.object` = `bench_sling.stocks_raw`, `mode: full-refresh`, "
            "`SLING_DIRECT_INSERT=true` (faster than its temp-table flow), "
            "`SLING_STREAM_URL_COLUMN=true` (the file's URL, for the company name)",
            "`target.options.post_sql` makes `bench_sling.historical_stocks_data` from the raw "
            "table with the derived columns (Sling has no computed columns for file sources)",
        ],
        "skips": [
            "types are inferred from a sample of rows (prices land as `numeric`, cast to double "
            "in the post-SQL); no validation, no rejects kept with reasons",
            "with direct insert the rows go straight into the recreated raw table (no temporary "
            "table swapped in), and the post-SQL drops and recreates the final table after the "
            "load: no atomic replace, readers can find it missing or partial",
            "no CSV published in S3, no checks, no typed view, no load ledger",
        ],
    },
}


# --- where the peers are installed ---------------------------------------------------------


def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def dlt_missing() -> str | None:
    """Why the dlt peer cannot run here, or None."""
    built = _PEERS_VENV_READY.read_text() if _PEERS_VENV_READY.exists() else None
    if built != _requirements_text():
        state = "is not built" if built is None else "was built for other versions"
        return (
            f"dlt is not installed: its venv benchmarks/.peers-venv {state} "
            "(`python -m benchmarks.peers install`; a full run builds it on demand)"
        )
    return None


def _requirements_text() -> str:
    return "\n".join(PEERS_REQUIREMENTS) + "\n"


def sling_binary() -> Path | None:
    """The Sling binary shipped inside the `sling-linux-amd64` wheel (bench extra)."""
    spec = importlib.util.find_spec("sling_linux_amd64")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "sling-linux-amd64"
    return binary if binary.exists() else None


def sling_missing() -> str | None:
    if sling_binary() is None:
        return "sling-linux-amd64 is not installed: pip install -e '.[bench]' (Linux x86-64)"
    return None


def install_peers_venv() -> None:
    """Build benchmarks/.peers-venv with dlt (about 20 s with a reachable package index)."""
    import shutil

    if PEERS_VENV.exists():
        shutil.rmtree(PEERS_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(peers_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PEERS_REQUIREMENTS], check=True)
    _PEERS_VENV_READY.write_text(_requirements_text())


# --- verification ---------------------------------------------------------------------------


def verify_table(database_url: str, table: str) -> dict[str, Any]:
    """Rows, distinct companies and Σ value_change of a loaded table, computed by PostgreSQL.

    `value_change::text::numeric`: ours and the DuckDB engine store the text of the double
    (Python's / DuckDB's shortest round-trip form), dlt and Sling a `double precision`, whose
    text (PostgreSQL ≥ 12) is the same shortest form; as `numeric` the sum is exact, so it does
    not depend on row order and equal doubles give equal sums, digit for digit.
    """
    import psycopg2

    from stock_assets.database import psycopg2_dsn

    with psycopg2.connect(psycopg2_dsn(database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT company_name), "
            f"sum(value_change::text::numeric)::text FROM {table}"
        )
        rows, companies, total = cur.fetchone()
    return {"rows": int(rows), "companies": int(companies), "value_change_sum": total}


# --- dlt ------------------------------------------------------------------------------------


def _postgres_parts(url: str) -> dict[str, Any]:
    """dlt's credentials from the stack's URL. dlt requires a host; a Unix socket folder given
    as the `host` query parameter (the embedded server's) is passed on as such, and libpq (both
    psycopg2 and the ADBC driver) lets it override the URL's host."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "drivername": "postgresql",
        "database": parts.path.lstrip("/") or "postgres",
        "username": parts.username or "postgres",
        "password": parts.password or "",
        "host": parts.hostname or "localhost",
        "port": parts.port or 5432,
        "query": query,
    }


def run_dlt(spec: dict[str, Any]) -> dict[str, Any]:
    """The dlt peer, in the peers' venv: filesystem source → pyarrow reader → postgres (ADBC)."""
    os.environ.update(DLT_ENV)
    # Parallelised transformers run on `extract.workers` threads (default 5): the pages wait on
    # S3, so more threads than cores (as with DuckDB's threads) was faster here.
    os.environ.setdefault("EXTRACT__WORKERS", str(spec.get("extract_workers", 16)))

    import dlt
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pv
    from dlt.common.configuration.specs import AwsCredentials
    from dlt.common.storages.fsspec_filesystem import fsspec_filesystem
    from dlt.sources.filesystem import filesystem

    started = time.perf_counter()
    bucket = spec["bucket"]
    credentials = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_REGION", "eu-west-1"),
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
    )
    fs, _ = fsspec_filesystem(f"s3://{bucket}", credentials)
    wanted = set(_filter_names(fs.cat_file(f"{bucket}/{FILTER_KEY}").decode()))
    types = {"Date": pa.date32(), "Volume": pa.int64()} | dict.fromkeys(
        ["Open", "High", "Low", "Close"], pa.float64()
    )
    convert = pv.ConvertOptions(column_types=types, include_columns=list(types))

    @dlt.transformer(standalone=True, parallelized=True)
    def read_stocks(items: Any) -> Any:
        for file_obj in items:
            with file_obj.open() as handle:
                body = handle.read()
            if not body.strip():
                continue  # an empty file: pyarrow refuses it
            raw = pv.read_csv(pa.BufferReader(body), convert_options=convert)
            if raw.num_rows == 0:
                continue
            open_, close = raw["Open"], raw["Close"]
            change = pc.subtract(close, open_)
            percent = pc.if_else(
                pc.equal(open_, 0.0),
                pa.scalar(None, pa.float64()),
                pc.multiply(pc.divide(change, open_), 100.0),
            )
            company = file_obj["file_name"].split(".", 1)[0]
            yield pa.table(
                {
                    "stock_date": raw["Date"],
                    "open_value": open_,
                    "high_value": raw["High"],
                    "low_value": raw["Low"],
                    "close_value": close,
                    "volume_traded": raw["Volume"],
                    "daily_percent_change": percent,
                    "value_change": change,
                    "company_name": pa.array([company] * raw.num_rows, pa.string()),
                }
            )

    files = filesystem(
        bucket_url=f"s3://{bucket}/Stocks",
        credentials=credentials,
        file_glob="*",
        files_per_page=int(spec.get("files_per_page", 10)),
    ).add_filter(lambda item: item["file_name"] in wanted)
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        destination=dlt.destinations.postgres(
            credentials=_postgres_parts(os.environ["STOCK_ASSETS_DATABASE_URL"])
        ),
        dataset_name=DLT_SCHEMA,
        pipelines_dir=spec["pipelines_dir"],
    )
    pipeline.run(
        (files | read_stocks()).with_name(TABLE),
        write_disposition="replace",
        loader_file_format="parquet",
    )
    trace = pipeline.last_trace
    steps = {
        f"{step.step}_seconds": round((step.finished_at - step.started_at).total_seconds(), 3)
        for step in trace.steps
        if step.finished_at is not None
    }
    normalize = trace.last_normalize_info
    rows = normalize.row_counts.get(TABLE) if normalize else None
    return {
        "success": True,
        "run_seconds": round(time.perf_counter() - started, 4),
        "phases": steps,
        "rows_written": rows,
        "table": PEER_TABLES["dlt"],
        "dlt_version": dlt.__version__,
    }


# --- Sling ----------------------------------------------------------------------------------


def _sling_postgres_url(url: str) -> str:
    """Sling (Go, pgx) wants `sslmode` said; the socket folder stays in the `host` parameter."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.setdefault("sslmode", "disable")
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query, safe="/")))


_SLING_POST_SQL = f"""DROP TABLE IF EXISTS {PEER_TABLES["sling"]};
CREATE TABLE {PEER_TABLES["sling"]} AS SELECT
    date AS stock_date, open::float8 AS open_value, high::float8 AS high_value,
    low::float8 AS low_value, close::float8 AS close_value, volume AS volume_traded,
    CASE WHEN open <> 0 THEN (close::float8 - open::float8) / open::float8 * 100
    END AS daily_percent_change,
    close::float8 - open::float8 AS value_change,
    split_part(regexp_replace(_sling_stream_url, '^.*/', ''), '.', 1) AS company_name
FROM {SLING_RAW_TABLE}"""


def run_sling(spec: dict[str, Any]) -> dict[str, Any]:
    """The Sling peer: read the filter, write the task, run the binary; all in this process tree.

    Prices are cast to double before subtracting, as every other approach computes them (Sling
    types them `numeric`, whose exact decimal difference would be another number).
    """
    import boto3

    started = time.perf_counter()
    binary = sling_binary()
    if binary is None:
        raise RuntimeError(sling_missing())
    bucket = spec["bucket"]
    s3 = boto3.client("s3")
    names = _filter_names(s3.get_object(Bucket=bucket, Key=FILTER_KEY)["Body"].read().decode())
    task = {
        "source": {
            "conn": "BENCH_S3",
            "stream": f"s3://{bucket}/Stocks/",
            # Only the files the filter names (every one exists in the benchmark's bucket).
            "files": [f"s3://{bucket}/Stocks/{name}" for name in names],
            "options": {"format": "csv"},
        },
        "target": {
            "conn": "BENCH_PG",
            "object": SLING_RAW_TABLE,
            "options": {"post_sql": _SLING_POST_SQL},
        },
        "mode": "full-refresh",
        "env": {"SLING_STREAM_URL_COLUMN": "true"},
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    s3_connection = {
        "type": "s3",
        "bucket": bucket,
        "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "region": os.environ.get("AWS_REGION", "eu-west-1"),
        **({"endpoint": endpoint} if endpoint else {}),
    }
    home = Path(spec["sling_home"])
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **SLING_ENV,
        "SLING_HOME_DIR": str(home),
        "SLING_DIRECT_INSERT": "true",
        "BENCH_S3": json.dumps(s3_connection),
        "BENCH_PG": _sling_postgres_url(os.environ["STOCK_ASSETS_DATABASE_URL"]),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=home, delete=False) as handle:
        json.dump(task, handle)
    try:
        proc = subprocess.run(
            [str(binary), "run", "-c", handle.name],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    sys.stderr.write(proc.stdout + proc.stderr)  # the worker's log keeps Sling's own output
    if proc.returncode != 0:
        raise RuntimeError(f"sling failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        "success": True,
        "run_seconds": round(time.perf_counter() - started, 4),
        "files_listed": len(names),
        "table": PEER_TABLES["sling"],
        "sling_version": "1.4.11",
    }


RUNNERS = {"dlt": run_dlt, "sling": run_sling}


def main(argv: list[str]) -> int:
    """`python -m benchmarks.peers install` builds the dlt venv; `… dlt|sling SPEC` runs one."""
    if argv[:1] == ["install"]:
        install_peers_venv()
        print(f"built {PEERS_VENV}", flush=True)
        return 0
    if len(argv) != 2 or argv[0] not in RUNNERS:
        print(main.__doc__, file=sys.stderr)
        return 2
    result = RUNNERS[argv[0]](json.loads(argv[1]))
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
