"""The one-pass output path: CSV built batch by batch, checks gathered on the way, and the
table loaded while the CSV is still being made (PipelinedLoad) — on the real PostgreSQL."""

import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, timedelta

import psycopg2
import pyarrow as pa
import pytest

from stock_assets.pipeline import quality
from stock_assets.pipeline.combine import combine
from stock_assets.pipeline.load import (
    LoadCheckFailed,
    PipelinedLoad,
    TableLoad,
    check_table_matches_csv,
    load_csv,
)
from stock_assets.pipeline.output import (
    CsvOutput,
    build_output,
    content_fingerprint,
    csv_lines,
    output_csv_bytes,
)
from stock_assets.pipeline.quality import ChecksummingReader
from stock_assets.pipeline.transform import transform_files
from stock_assets.settings import TABLE_NAME
from stock_assets_tests.conftest import csv_as_table_rows, sample_files, table_rows

SHIFTED = (
    b"Date,Open,High,Low,Close,Volume,OpenInt\n"
    b"2010-01-04,0,9,8,8.5,0,0\n"  # Open = 0, zero volume
    b"2010-01-05,85,9,8,8.7,10,0\n"  # a decimal shift: Open far above High
)


def _files() -> list[tuple[str, bytes]]:
    # Real samples, a file with an Open of 0, a decimal shift and a zero volume, and a second
    # file for the same company (cross-file duplicate dates).
    files = sample_files()
    return [*files, ("shift.us.csv", SHIFTED), ("shift.uk.csv", SHIFTED)]


@contextmanager
def _closing(conn):
    try:
        yield conn
    finally:
        conn.close()


def _connect(url: str):
    return lambda: _closing(psycopg2.connect(url))


def test_one_pass_output_equals_the_whole_table_path():
    files = _files()
    chunks: list[bytes] = []
    combined, csv_output, profile = build_output(
        iter(files), [name for name, _ in files], forward=chunks.append
    )
    reference = combine(transform_files(files))
    body = output_csv_bytes(reference.table)
    # Same bytes whether written at once or in chunks (each chunk whole lines).
    assert csv_output.getvalue() == body == b"".join(chunks)
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert csv_output.rows == reference.table.num_rows == combined.rows_written
    assert csv_output.fingerprint == content_fingerprint(body)
    assert csv_output.size == len(body)
    assert len(combined.cross_file_duplicates) == 2  # shift.uk.csv repeats shift.us.csv's dates


def test_findings_gathered_batch_by_batch_equal_the_whole_table_ones():
    files = _files()
    # Tiny chunks: many batches, so merging across batches is what is tested.
    table = combine(transform_files(files)).table
    profile = quality.OutputProfile()
    for start in range(0, table.num_rows, 7):
        profile.add(table.slice(start, 7))
    assert profile.findings["open_zero_rows"] == quality.open_zero_rows(table)
    assert profile.findings["ohlc_consistency"] == quality.ohlc_inconsistencies(table)
    assert profile.findings["zero_volume"] == quality.zero_volume_rows(table)
    opens = table["open_value"].to_pylist()
    assert profile.findings["open_zero_rows"].count == sum(float(v) == 0 for v in opens) >= 1
    assert profile.format_problems == quality.format_problems(table) == {}
    assert dict(profile.rows_per_year) == quality.rows_per_year(table)
    assert profile.duplicates(table) == quality.duplicate_keys(table)


def test_duplicates_and_format_problems_are_found_across_batches():
    rows = {
        "stock_date": ["2020-01-02", "2020-01-03", "2020-01-02", "20-01-04"],
        "open_value": ["1.0", "1.0", "1.0", "x"],
        "high_value": ["1.0"] * 4,
        "low_value": ["1.0"] * 4,
        "close_value": ["1.0"] * 4,
        "volume_traded": ["1"] * 4,
        "daily_percent_change": ["0.0"] * 4,
        "value_change": ["0.0"] * 4,
        "company_name": ["a", "a", "a", "b"],
    }
    table = pa.table(rows)
    profile = quality.OutputProfile()
    profile.add(table.slice(0, 2))
    profile.add(table.slice(2, 1))
    profile.add(table.slice(3, 1))
    dup = profile.duplicates(table)
    assert dup.count == 1 and dup.examples == ["company_name=a, stock_date=2020-01-02"]
    assert set(profile.format_problems) == {"stock_date", "open_value"}
    assert profile.format_problems == quality.format_problems(table)


def test_duplicates_counted_per_batch_when_each_batch_holds_whole_companies():
    # The pipeline's shape: every company's rows in one batch. Seven companies, each with one
    # date repeated (company i repeats it i times), so there are more repeated keys than
    # examples shown.
    batches = []
    for i in range(1, 8):
        dates = [f"2020-01-{d:02d}" for d in range(1, 4)] + ["2020-01-02"] * i
        batches.append(pa.table({"stock_date": dates, "company_name": [f"c{i}"] * len(dates)}))
    table = pa.concat_tables(batches)
    whole = quality.duplicate_keys(table)
    assert whole.count == sum(range(1, 8)) == 28
    # Examples are the first five distinct repeated keys, not five rows of the first two.
    assert whole.examples == [f"company_name=c{i}, stock_date=2020-01-02" for i in range(1, 6)]

    # Through `add` (the batch-by-batch count): the same finding, without the final sort.
    full = pa.table(
        {
            **{c: ["1.0"] * table.num_rows for c in quality._PRICE_OUTPUT},
            "volume_traded": ["1"] * table.num_rows,
            "daily_percent_change": ["0.0"] * table.num_rows,
            "value_change": ["0.0"] * table.num_rows,
            "stock_date": table["stock_date"],
            "company_name": table["company_name"],
        }
    )
    by_batch = quality.OutputProfile()
    offset = 0
    for batch in batches:
        by_batch.add(full.slice(offset, batch.num_rows))
        offset += batch.num_rows
    assert by_batch._duplicates == whole  # counted on the way, not by the fallback
    assert by_batch.duplicates(full) == whole
    # A company whose rows span two batches: counted over all the keys instead.
    spanning = quality.OutputProfile()
    spanning.add(full.slice(0, 5))
    spanning.add(full.slice(5))
    assert spanning._duplicates is None
    assert spanning.duplicates(full) == whole
    # Told that one file feeds each company (no shared companies), the profile keeps no per-row
    # keys, so its memory does not grow with the rows, and still counts the same.
    lean = quality.OutputProfile(shared_companies=set())
    offset = 0
    for batch in batches:
        lean.add(full.slice(offset, batch.num_rows))
        offset += batch.num_rows
    assert lean._keys == [] and lean.duplicates(full) == whole
    # A company spanning batches that nobody announced is an error, not a wrong count.
    wrong = quality.OutputProfile(shared_companies=set())
    wrong.add(full.slice(0, 5))
    wrong.add(full.slice(5))
    with pytest.raises(RuntimeError, match="spans batches"):
        wrong.duplicates(full)
    # With a shared company the keys are kept for the sort over all of them.
    shared = quality.OutputProfile(shared_companies={"c1"})
    shared.add(full.slice(0, 5))
    shared.add(full.slice(5))
    assert shared.duplicates(full) == whole


def test_pipelined_load_commits_exactly_the_streamed_csv(clean_stack, db):
    body = CsvOutput()
    body.add(combine(transform_files(_files())).table)
    body.close()
    data = body.getvalue()
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    with PipelinedLoad(_connect(url)) as load:
        for start in range(0, len(data), 1000):  # chunks that cut lines anywhere
            load.write(data[start : start + 1000])
        load.finish(body.rows)
        assert load.streamed_crc32 == quality.line_checksum(csv_lines(data))
        result = load.commit(csv_duplicates=0)
    # COPY FREEZE: every row is written frozen (HEAP_XMIN_FROZEN in its header), so readers need
    # no commit-log lookups and autovacuum has nothing to freeze after the load.
    with db.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE t_infomask & 768 = 768) "
            "FROM generate_series(0, pg_relation_size('historical_stocks_data') / "
            "current_setting('block_size')::int - 1) AS page, "
            "heap_page_items(get_raw_page('historical_stocks_data', page::int))"
        )
        tuples, frozen = cur.fetchone()
    assert tuples == body.rows and frozen == tuples
    assert result.rows_loaded == body.rows
    assert {o.name: o.passed for o in result.checks} == {
        "table_matches_csv": True,
        "table_no_duplicate_keys": True,
    }
    # NULL (not '') where the CSV field is empty: blj's Open = 0 row is among them.
    expected = csv_as_table_rows(data.decode().splitlines())
    assert any(None in row for row in expected)
    assert Counter(table_rows(db)) == Counter(expected)


def _load_old_rows(url: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        load_csv(conn, io.BytesIO(b"2001-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,old\n"))
    finally:
        conn.close()
    return [("2001-01-02", "1.0", "1.0", "1.0", "1.0", "1", "0.0", "0.0", "old")]


def test_a_failure_after_the_copy_leaves_the_table_as_it_was(clean_stack, db):
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    before = _load_old_rows(url)
    with pytest.raises(RuntimeError, match="upload failed"), PipelinedLoad(_connect(url)) as load:
        load.write(b"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,new\n")
        load.finish(1)
        raise RuntimeError("upload failed")  # e.g. the CSV's PUT, before commit
    assert table_rows(db) == before


def test_a_failed_first_load_leaves_no_table_as_it_found_none(clean_stack, db):
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    with pytest.raises(RuntimeError, match="upload failed"), PipelinedLoad(_connect(url)) as load:
        load.write(b"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,new\n")
        load.finish(1)
        raise RuntimeError("upload failed")
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (TABLE_NAME,))
        assert cur.fetchone() == (None,)  # the (empty) load ledger may exist: it shows nothing


def test_two_first_loads_at_once_both_succeed_one_after_the_other(clean_stack, db):
    """The second waits for the first (which creates the table) instead of failing on it."""
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    first_in, first_may_commit = threading.Event(), threading.Event()

    def load(company: str, first: bool) -> None:
        with PipelinedLoad(_connect(url)) as loading:
            loading.write(f"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,{company}\n".encode())
            loading.finish(1)
            if first:
                first_in.set()
                first_may_commit.wait(30)
            loading.commit(csv_duplicates=0)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(load, "first", True)
        assert first_in.wait(30)
        second = pool.submit(load, "second", False)
        time.sleep(1)  # the second is now waiting for the first's transaction
        first_may_commit.set()
        first.result(60)
        second.result(60)
    assert [row[-1] for row in table_rows(db)] == ["second"]


def test_a_wrong_row_count_fails_the_check_and_rolls_back(clean_stack, db):
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    before = _load_old_rows(url)
    with PipelinedLoad(_connect(url)) as load:
        load.write(b"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,new\n")
        load.finish(2)
        with pytest.raises(
            LoadCheckFailed, match="table would hold 1 rows from 1 lines streamed; the CSV has 2"
        ):
            load.commit(csv_duplicates=0)
    assert table_rows(db) == before


def test_a_load_whose_check_failed_cannot_be_committed_even_if_the_failure_is_caught(
    clean_stack, db
):
    url = clean_stack.env["STOCK_ASSETS_DATABASE_URL"]
    before = _load_old_rows(url)
    conn = psycopg2.connect(url)
    try:
        with TableLoad(conn) as load:
            load.copy(io.BytesIO(b"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,new\n"))
            reader = ChecksummingReader(io.BytesIO(b""))
            with pytest.raises(LoadCheckFailed):
                load.check([check_table_matches_csv(2, None, reader)])
            with pytest.raises(LoadCheckFailed):
                load.commit()
    finally:
        conn.close()
    assert table_rows(db) == before


def test_a_database_that_is_down_fails_only_at_commit(clean_stack):
    def connect():
        return psycopg2.connect("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=2)

    with PipelinedLoad(lambda: _closing(connect())) as load:
        load.write(b"anything\n")  # the producer carries on, never blocked
        load.finish(1)
        assert isinstance(load.error, psycopg2.OperationalError)
        assert load.streamed_crc32 is None
        with pytest.raises(psycopg2.OperationalError):
            load.commit(csv_duplicates=0)


def test_far_apart_dates_of_different_companies_are_not_duplicates():
    far = date(1970, 1, 1) + timedelta(days=932_896)  # 2 companies × 1e6 days below 9999-12-31
    table = pa.table(
        {
            "stock_date": ["9999-12-31", "2000-01-01", far.isoformat()],
            "company_name": ["a", "b", "c"],
        }
    )
    assert quality.duplicate_keys(table).count == 0
    assert quality.duplicate_keys(pa.concat_tables([table, table])).count == 3


def test_csv_written_alone_sums_its_line_checksums_as_the_table_side_would():
    table = combine(transform_files(_files())).table
    alone = CsvOutput(line_checksums=True, rows_per_chunk=50)  # many chunks
    for start in range(0, table.num_rows, 30):
        alone.add(table.slice(start, 30))
    alone.close()
    body = alone.getvalue()
    assert body == output_csv_bytes(table)
    assert alone.crc32 == quality.line_checksum(csv_lines(body)) != 0


def test_upload_body_is_the_whole_csv_seekable_for_botocore():
    table = combine(transform_files(_files())).table
    built = CsvOutput(rows_per_chunk=3)  # many chunks
    for start in range(0, table.num_rows, 5):
        built.add(table.slice(start, 5))
    built.close()
    whole = output_csv_bytes(table)
    body = built.body()
    assert body.seek(0, io.SEEK_END) == len(whole) == built.size  # botocore's Content-Length
    body.seek(0)
    pieces = iter(lambda: body.read(7), b"")  # a retry rewinds and reads it again
    assert b"".join(pieces) == whole
    assert built.body().read() == whole  # each call starts at the beginning
    assert CsvOutput().body().read() == b""  # no rows: an empty object
    # A CSV built chunk by chunk uploads exactly its bytes.
    table = combine(transform_files(_files())).table
    built = CsvOutput(rows_per_chunk=3)
    for start in range(0, table.num_rows, 5):
        built.add(table.slice(start, 5))
    built.close()
    assert built.body().read() == output_csv_bytes(table)


def test_a_values_format_verdict_does_not_depend_on_the_other_rows():
    numbers = ["30", "1e5", "+2.5", "5e1"]
    rows = {
        "stock_date": ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"],
        **{c: numbers for c in ["open_value", "high_value", "low_value", "close_value"]},
        "volume_traded": ["1", "2", "3", "4"],
        "daily_percent_change": [None, "0.0", "inf", "1.5"],
        "value_change": numbers,
        "company_name": ["a"] * 4,
    }
    table = pa.table(rows)
    # The fast path (every column casts) and the slow one (a bad date elsewhere) agree: the
    # numbers are numbers, inf is not, whatever else the batch holds.
    alone = quality.format_problems(table)
    with_bad_date = quality.format_problems(
        pa.concat_tables([table, table.slice(0, 1).set_column(0, "stock_date", [["2020-13-01"]])])
    )
    assert set(alone) == {"daily_percent_change"} and alone["daily_percent_change"].count == 1
    assert set(with_bad_date) == {"stock_date", "daily_percent_change"}
    assert with_bad_date["daily_percent_change"].count == 1
    minus_zero = table.set_column(5, "volume_traded", [["-0", "2", "3", "4"]])
    assert quality.format_problems(minus_zero)["volume_traded"].count == 1
