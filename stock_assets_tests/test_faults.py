"""Faults survived: S3 errors, slowness and outages; PostgreSQL connections cut or killed mid-load;
a run killed mid-transform. Each on the real local stack, through real network paths."""

import glob
import os
import signal
import subprocess
import sys
import time

import psycopg2
import pytest
from dagster import DagsterInstance, materialize

from stock_assets.assets import historical_stock_data, raw_stock_files
from stock_assets.pipeline.companies import parse_company_filter
from stock_assets.pipeline.run import RUN_META
from stock_assets.resources import PipelineSettings, PostgresResource, StockS3Resource
from stock_assets.settings import OUTPUT_KEY, STOCKS_PREFIX
from stock_assets_tests.conftest import REPO_ROOT, SAMPLE_FILTER, table_rows
from stock_assets_tests.faults import ACCESS_DENIED, HttpFault, TcpToUnixProxy
from stock_assets_tests.test_pipeline import metadata, run_job, spec_csv_lines

ASSETS = [raw_stock_files, historical_stock_data]


def step_errors(result) -> str:
    return "\n".join(
        e.event_specific_data.error.to_string()
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )


def output_bytes(s3_client, naming) -> bytes:
    return s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()


@pytest.fixture
def loaded(seeded_stack, s3_client, naming, db):
    assert run_job().success
    return sorted(table_rows(db)), output_bytes(s3_client, naming)


def assert_unchanged(loaded, s3_client, naming, db) -> None:
    rows, output = loaded
    assert sorted(table_rows(db)) == rows
    assert output_bytes(s3_client, naming) == output


def test_s3_503s_during_reads_are_retried_and_the_run_succeeds(loaded, s3_proxy, db):
    fault = HttpFault(method="GET", path_contains=f"/{STOCKS_PREFIX}", status=503, times=4)
    s3_proxy.faults.append(fault)
    result = run_job()
    assert result.success, step_errors(result)
    assert fault.hits == 4
    assert sorted(table_rows(db)) == loaded[0]
    # Each refused presigned GET was read again with get_object, and the run says how many.
    assert 1 <= metadata(result, "historical_stock_data_csv")["reads_retried"] <= 4


def test_a_stock_file_s3_refuses_is_skipped_with_the_reason_and_the_rest_loaded(
    loaded, s3_proxy, s3_client, naming, db
):
    # The spec: an unreadable file is skipped and reported, not fatal. S3 refuses one object
    # (the presigned GET and get_object alike: botocore does not retry a 403).
    fault = HttpFault(method="GET", path_contains="/tmusp.us.csv", status=403, body=ACCESS_DENIED)
    s3_proxy.faults.append(fault)
    result = run_job()
    assert result.success, step_errors(result)
    assert fault.hits == 2
    key = f"Output/rejected/{result.run_id}/skipped_files.csv"
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=key)["Body"].read().decode()
    assert "tmusp.us.csv,0,unreadable: S3 refused the GET (AccessDenied: Access Denied)" in body
    rows = table_rows(db)
    assert rows and not [r for r in rows if r[-1] == "tmusp"]
    assert sorted(rows) == sorted(r for r in loaded[0] if r[-1] != "tmusp")


def test_a_refused_output_write_is_sent_again_whole(loaded, s3_proxy, s3_client, naming, db):
    # The upload body is a reader over the CSV's chunks: botocore must be able to rewind it.
    fault = HttpFault(method="PUT", path_contains=OUTPUT_KEY, status=500, times=2)
    s3_proxy.faults.append(fault)
    result = run_job()
    assert result.success, step_errors(result)
    assert fault.hits == 2
    written = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    assert written["Metadata"][RUN_META] == result.run_id  # this run's write, the third try
    assert output_bytes(s3_client, naming) == loaded[1]
    assert sorted(table_rows(db)) == loaded[0]


def test_a_run_reads_only_the_named_files_and_never_lists_stocks(
    loaded, s3_proxy, s3_client, naming
):
    # A file the filter does not name: the run must not touch it (nor list the folder).
    body = b"Date,Open,High,Low,Close,Volume,OpenInt\n2017-11-10,1,2,0.5,1.5,10,0\n"
    s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}new.us.csv", Body=body)
    assert run_job().success
    listings = [p for m, p in s3_proxy.requests if m == "GET" and "list-type=2" in p]
    assert listings == []
    read = {p.split("?")[0].rsplit("/", 1)[-1] for m, p in s3_proxy.requests if m == "GET"}
    named = set(parse_company_filter(SAMPLE_FILTER.read_bytes()).files)
    assert named <= read
    assert not {"new.us.csv", "a.us.csv"} & read  # under Stocks/, not in the filter


def test_s3_500s_on_the_output_write_fail_cleanly_after_bounded_retries(
    loaded, s3_proxy, s3_client, naming, db
):
    fault = HttpFault(method="PUT", path_contains=OUTPUT_KEY, status=500)
    s3_proxy.faults.append(fault)
    result = run_job()
    assert not result.success
    assert fault.hits == StockS3Resource().max_attempts  # bounded: 5 attempts, then give up
    assert "500" in step_errors(result) or "reached max retries" in step_errors(result)
    assert_unchanged(loaded, s3_client, naming, db)


def test_s3_endpoint_down_fails_cleanly(loaded, monkeypatch, s3_client, naming, db):
    from stock_assets.local.stack import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    result = run_job()
    assert not result.success
    assert "Could not connect to the endpoint URL" in step_errors(result)
    assert_unchanged(loaded, s3_client, naming, db)


def _materialize_with_s3(s3: StockS3Resource, local_stack):
    return materialize(
        ASSETS,
        resources={
            "s3": s3,
            "postgres": PostgresResource(database_url=local_stack.env["STOCK_ASSETS_DATABASE_URL"]),
            "settings": PipelineSettings(),
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_a_slow_answer_times_out_and_is_retried(
    loaded, s3_proxy, local_stack, s3_client, naming, db
):
    # The filter's first file: its read finishes last, yet its rows still open the CSV.
    fault = HttpFault(method="GET", path_contains="/tmusp.us.csv", delay=3.0, times=1)
    s3_proxy.faults.append(fault)
    result = _materialize_with_s3(StockS3Resource(read_timeout_seconds=1), local_stack)
    assert result.success, step_errors(result)
    assert fault.hits == 1
    assert sorted(table_rows(db)) == loaded[0]
    assert output_bytes(s3_client, naming).decode().splitlines() == spec_csv_lines()


def test_an_endpoint_that_stays_slow_fails_cleanly(
    loaded, s3_proxy, local_stack, s3_client, naming, db
):
    s3_proxy.faults.append(HttpFault(method="GET", path_contains=f"/{STOCKS_PREFIX}", delay=2.0))
    s3 = StockS3Resource(read_timeout_seconds=0.5, max_attempts=2)
    result = _materialize_with_s3(s3, local_stack)
    assert not result.success
    assert "Read timeout" in step_errors(result)
    assert_unchanged(loaded, s3_client, naming, db)


@pytest.fixture
def pg_proxy(local_stack, monkeypatch):
    socket_dir = local_stack.env["STOCK_ASSETS_DATABASE_URL"].split("host=", 1)[1]
    [socket_path] = glob.glob(f"{socket_dir}/.s.PGSQL.*[0-9]")
    proxy = TcpToUnixProxy(socket_path).start()
    monkeypatch.setenv(
        "STOCK_ASSETS_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    )
    yield proxy
    proxy.stop()


def _once_past(threshold: int, action):
    done = []

    def on_bytes(proxy: TcpToUnixProxy, total: int) -> None:
        if total > threshold and not done:
            done.append(True)
            action(proxy)

    return on_bytes


def test_connection_cut_mid_copy_leaves_the_table_and_the_next_run_succeeds(
    loaded, pg_proxy, monkeypatch, db, local_stack
):
    pg_proxy.on_bytes = _once_past(150_000, lambda proxy: proxy.cut())
    result = run_job(["historical_stocks_data"])
    assert not result.success
    assert pg_proxy.client_bytes > 150_000  # the COPY was well under way
    assert sorted(table_rows(db)) == loaded[0]
    monkeypatch.setenv("STOCK_ASSETS_DATABASE_URL", local_stack.env["STOCK_ASSETS_DATABASE_URL"])
    assert run_job(["historical_stocks_data"]).success
    assert sorted(table_rows(db)) == loaded[0]


def test_connection_cut_mid_copy_in_a_full_run_publishes_the_csv_and_keeps_the_table(
    loaded, pg_proxy, monkeypatch, s3_client, naming, db, local_stack
):
    # The full run loads the table while it writes the CSV. A changed input, so the new CSV
    # differs from the one the table holds.
    s3_client.delete_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}flhk.us.csv")
    pg_proxy.on_bytes = _once_past(150_000, lambda proxy: proxy.cut())
    result = run_job()
    assert not result.success
    assert pg_proxy.client_bytes > 150_000  # the COPY was well under way
    # The CSV does not depend on the database: checked and published. The table: untouched.
    assert b",flhk\n" not in output_bytes(s3_client, naming)
    assert sorted(table_rows(db)) == loaded[0]
    monkeypatch.setenv("STOCK_ASSETS_DATABASE_URL", local_stack.env["STOCK_ASSETS_DATABASE_URL"])
    assert run_job().success
    new_lines = output_bytes(s3_client, naming).decode().splitlines()
    assert len(table_rows(db)) == len(new_lines) < len(loaded[0])


def test_a_connection_lost_after_the_commit_does_not_fail_the_loaded_run(
    seeded_stack, pg_proxy, db
):
    # The connection drops between COMMIT and the query for the UI's preview rows: the table is
    # loaded, so the run succeeds, and its metadata shows no preview rows rather than failing.
    pg_proxy.cut_before = b'SELECT * FROM "historical_stocks_data" LIMIT'
    result = run_job()
    assert result.success, step_errors(result)
    meta = metadata(result, "historical_stocks_data")
    assert meta["dagster/row_count"] == len(table_rows(db)) > 0
    assert meta["preview"].count("\n") == 1  # the header and its rule: no rows to show


def test_backend_killed_mid_copy_leaves_the_table(loaded, pg_proxy, db, local_stack):
    def kill_loader(_proxy: TcpToUnixProxy) -> None:
        admin = psycopg2.connect(local_stack.env["STOCK_ASSETS_DATABASE_URL"])
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'stock_assets' AND pid <> pg_backend_pid()"
            )
        admin.close()

    pg_proxy.on_bytes = _once_past(150_000, kill_loader)
    result = run_job(["historical_stocks_data"])
    assert not result.success
    assert "terminat" in step_errors(result).lower() or "closed" in step_errors(result).lower()
    assert sorted(table_rows(db)) == loaded[0]


def test_run_killed_mid_transform_leaves_no_partial_output(loaded, s3_proxy, s3_client, naming, db):
    # A changed input, so a run that completed its write would leave a different object.
    s3_client.delete_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}flhk.us.csv")
    s3_proxy.faults.append(HttpFault(method="GET", path_contains=f"/{STOCKS_PREFIX}", delay=0.5))
    code = "import sys; from stock_assets_tests.test_pipeline import metadata, run_job; run_job()"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=dict(os.environ))
    deadline = time.monotonic() + 120
    while sum(1 for m, p in s3_proxy.requests if f"/{STOCKS_PREFIX}" in p and m == "GET") < 2:
        assert process.poll() is None and time.monotonic() < deadline, "run ended too early"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_unchanged(loaded, s3_client, naming, db)  # the old object, whole; never a partial one
    s3_proxy.faults.clear()
    result = run_job()  # the next run recovers
    assert result.success
    assert b",flhk\n" not in output_bytes(s3_client, naming)
