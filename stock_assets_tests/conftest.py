"""Shared fixtures: the real local stack (moto server + embedded PostgreSQL), reset per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg2
import pytest
from psycopg2 import sql

from stock_assets.local.seed import seed_source_bucket
from stock_assets.local.stack import LocalStack
from stock_assets.pipeline.ledger import LEDGER_TABLE
from stock_assets.settings import TABLE_NAME, Naming
from stock_assets_tests.faults import FaultyHttpProxy

TESTS_DATA = Path(__file__).parent / "data"
SAMPLE_STOCKS = TESTS_DATA / "Stocks"
SAMPLE_FILTER = TESTS_DATA / "top_companies_sample.txt"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not stack"` then runs only the tests that need no servers; fixturenames is already
    # the closure, so a test that reaches local_stack through other fixtures counts too.
    for item in items:
        if "local_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


def sample_files(names: list[str] | None = None) -> list[tuple[str, bytes]]:
    paths = sorted(SAMPLE_STOCKS.glob("*.csv"))
    return [(p.name, p.read_bytes()) for p in paths if names is None or p.name in names]


@pytest.fixture(scope="session")
def local_stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    """One moto server and one PostgreSQL server for the whole test session.

    Its folder is not under pytest's basetemp: another pytest session on the machine resets
    /tmp/pytest-of-<user> to mode 0700, and the embedded PostgreSQL, which runs as its own user
    when the tests run as root, then loses its data directory mid-session (PANIC: pg_control
    "Permission denied"). Removed at the end, unless a test failed (its logs are kept there)."""
    workdir = Path(tempfile.mkdtemp(prefix="stock-assets-test-stack-"))
    stack = LocalStack(workdir=workdir)
    stack.start()
    saved = {name: os.environ.get(name) for name in stack.env}
    stack.apply_env()
    # Tests use the default names (Dora Explorer) unless they say otherwise.
    for name in list(os.environ):
        if name.startswith("STOCK_ASSETS_") and name != "STOCK_ASSETS_DATABASE_URL":
            del os.environ[name]
    yield stack
    stack.stop()
    if request.session.testsfailed:
        print(f"\nthe test stack's folder (moto.log, pgdata/log) is kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_client(local_stack: LocalStack):
    return boto3.client("s3")


@pytest.fixture
def naming() -> Naming:
    return Naming()


@pytest.fixture
def s3_proxy(local_stack: LocalStack, monkeypatch) -> Iterator[FaultyHttpProxy]:
    """S3 through a fault-injecting proxy (boto3's per-service endpoint variable, inherited by
    child processes too); SNS stays direct."""
    proxy = FaultyHttpProxy(local_stack.moto.endpoint_url).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    yield proxy
    proxy.stop()


@pytest.fixture
def db(local_stack: LocalStack) -> Iterator:
    conn = psycopg2.connect(local_stack.env["STOCK_ASSETS_DATABASE_URL"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def clean_stack(local_stack: LocalStack, db) -> LocalStack:
    """Empty S3/SNS and no target table: each test starts from nothing."""
    local_stack.moto.reset()
    with db.cursor() as cur:
        cur.execute(
            sql.SQL("DROP TABLE IF EXISTS {}, {} CASCADE").format(
                sql.Identifier(TABLE_NAME), sql.Identifier(LEDGER_TABLE)
            )
        )
    return local_stack


@pytest.fixture
def seeded_stack(clean_stack: LocalStack, s3_client, naming: Naming) -> LocalStack:
    """The course's bucket layout with the real sample files and a filter naming them."""
    seed_source_bucket(
        s3_client,
        naming,
        data_dir=TESTS_DATA,
        filter_bytes=SAMPLE_FILTER.read_bytes(),
        files=iter(sample_files()),
    )
    return clean_stack


def table_rows(db, order: bool = False) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(TABLE_NAME)))
        return cur.fetchall()


def csv_as_table_rows(lines: list[str]) -> list[tuple[str | None, ...]]:
    """The rows the table must hold for these CSV lines: an empty field is NULL (spec §4)."""
    return [tuple(v or None for v in line.split(",")) for line in lines]
