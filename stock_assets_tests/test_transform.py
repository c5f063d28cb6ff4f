import numpy as np
import pytest

from stock_assets.pipeline.combine import combine
from stock_assets.pipeline.floats import format_floats
from stock_assets.pipeline.output import output_csv_bytes
from stock_assets.pipeline.transform import transform_file
from stock_assets_tests.conftest import SAMPLE_STOCKS

HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"


def reference_line(raw: str, company: str) -> str:
    """The spec's rule written the plain way, row by row: the oracle for the fast path."""
    d, o, h, lo, c, v, _ = raw.split(",")
    o, h, lo, c = map(float, (o, h, lo, c))
    pct = "" if o == 0 else repr((c - o) / o * 100)
    return ",".join(
        [d, repr(o), repr(h), repr(lo), repr(c), str(int(v)), pct, repr(c - o), company]
    )


def lines_of(result) -> list[str]:
    if result.table is None:
        return []
    return output_csv_bytes(result.table).decode().splitlines()


@pytest.mark.parametrize("path", sorted(SAMPLE_STOCKS.glob("*.csv")), ids=lambda p: p.name)
def test_every_sample_row_matches_the_plain_reference(path):
    data = path.read_bytes()
    result = transform_file(path.name, data)
    expected = [
        reference_line(line, path.name.split(".")[0]) for line in data.decode().splitlines()[1:]
    ]
    assert lines_of(result) == expected


def test_first_output_line_is_the_specs():
    result = transform_file("tmusp.us.csv", (SAMPLE_STOCKS / "tmusp.us.csv").read_bytes())
    assert lines_of(result)[0] == (
        "2015-10-27,65.17,65.17,63.056,63.187,36229,-3.0428111094061747,-1.983000000000004,tmusp"
    )


def test_open_zero_row_is_kept_with_an_empty_percentage_and_counted():
    result = transform_file("blj.us.csv", (SAMPLE_STOCKS / "blj.us.csv").read_bytes())
    zero = [line for line in lines_of(result) if line.startswith("2008-02-07,")]
    assert len(zero) == 1
    fields = zero[0].split(",")
    assert fields[1] == "0.0" and fields[6] == "" and fields[8] == "blj"
    assert result.open_zero_rows == 1
    assert "inf" not in output_csv_bytes(result.table).decode()


def test_empty_file_is_skipped_with_a_reason():
    result = transform_file("bxg.us.csv", b"")
    assert result.skip_reason and "empty" in result.skip_reason
    assert result.rows_read == 0 and result.rows_written == 0


def test_bad_rows_are_rejected_with_reasons_and_counts_reconcile():
    data = HEADER + (
        b"2020-01-02,1.0,2.0,0.5,1.5,100,0\n"
        b"2020-02-30,1.0,2.0,0.5,1.5,100,0\n"  # impossible date
        b"2020-01-03,abc,2.0,0.5,1.5,100,0\n"  # non-numeric price
        b"2020-01-04,NaN,2.0,0.5,1.5,100,0\n"
        b"2020-01-05,1.0,inf,0.5,1.5,100,0\n"
        b"2020-01-06,1.0,2.0,0.5,1.5,-5,0\n"  # negative volume
        b"2020-01-07,1.0,2.0,0.5,1.5,100\n"  # missing field
        b"2020-01-02,9.0,9.0,9.0,9.0,9,0\n"  # duplicate date
        b"2020-01-08,1,2,0.5,1.5,100,0\n"
    )
    result = transform_file("x.us.csv", data)
    assert result.rows_read == 9
    assert result.rows_written == 2
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9]
    assert "date" in reasons[3] and "Open" in reasons[4] and "Open" in reasons[5]
    assert "High" in reasons[6] and "Volume" in reasons[7] and "fields" in reasons[8]
    assert "duplicate" in reasons[9]
    assert lines_of(result)[1].startswith("2020-01-08,1.0,2.0,0.5,1.5,100,")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("h.us.csv", b"date,open\n2020-01-01,1\n", "header"),
        ("g.us.csv", b"\x1f\x8b\x08\x00garbage", "gzip"),
        ("b.us.csv", b"\x00\x01\x02binary", "binary"),
    ],
)
def test_unreadable_files_are_skipped_with_a_reason(name, data, reason):
    result = transform_file(name, data)
    assert result.table is None
    assert reason in result.skip_reason


def test_bom_and_crlf_are_tolerated():
    data = (
        b"\xef\xbb\xbf" + HEADER.replace(b"\n", b"\r\n") + b"2020-01-02,1.5,2.0,0.5,1.0,100,0\r\n"
    )
    result = transform_file("c.us.csv", data)
    assert result.rejected == []
    assert lines_of(result) == ["2020-01-02,1.5,2.0,0.5,1.0,100,-33.33333333333333,-0.5,c"]


def test_combine_keeps_filter_order_and_drops_cross_file_duplicates():
    first = transform_file("dup.us.csv", HEADER + b"2020-01-02,1,1,1,1,1,0\n")
    second = transform_file(
        "dup.uk.csv", HEADER + b"2020-01-02,2,2,2,2,2,0\n2020-01-03,2,2,2,2,2,0\n"
    )
    other = transform_file("zz.us.csv", HEADER + b"2020-01-02,3,3,3,3,3,0\n")
    combined = combine([other, first, second])
    dates = combined.table.column("company_name").to_pylist()
    assert dates == ["zz", "dup", "dup"]
    assert len(combined.cross_file_duplicates) == 1
    assert combined.rows_read == combined.table.num_rows + combined.rows_rejected


def test_format_floats_is_pythons_repr_for_edge_and_random_values():
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            [0.0, -0.0, 1.0, -26.0, 1e-5, 1e-4, 1e15, 1e16, 999999999999999.0, 5e-324, 0.1 + 0.2],
            rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 22, 20000),
            np.round(rng.random(20000) * 1e6),
        ]
    )
    assert format_floats(values).to_pylist() == [repr(float(v)) for v in values]


HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"
GOOD = b"2020-01-02,1.0,2.0,0.5,1.5,5,0\n"


@pytest.mark.parametrize(
    "row",
    [
        b"2020-01-03,1.0," + b"9" * 400 + b",0.5,1.5,5,0\n",  # a price that parses as inf
        b"2020-01-03,0." + b"0" * 307 + b"1,2.0,0.0,1.0,5,0\n",  # change / 1e-308: inf percent
    ],
    ids=["price", "percentage"],
)
def test_a_row_whose_numbers_overflow_a_double_is_rejected_not_written_as_inf(row):
    # Both paths: the file alone (the fast path would take it) and with a padded field (general).
    for data in [HEADER + GOOD + row, HEADER + b"2020-01-02, 1.0,2.0,0.5,1.5,5,0\n" + row]:
        result = transform_file("x.us.csv", data)
        assert result.rows_read == 2 and result.table.num_rows == 1
        [rejected] = result.rejected
        assert rejected.line == 3 and "overflows a double" in rejected.reason
        assert b"inf" not in output_csv_bytes(result.table)


def test_tab_padding_is_trimmed_like_space_padding():
    tabbed = transform_file("x.us.csv", HEADER + b"2020-01-02,\t1.0,2.0,0.5,1.5,5,0\n")
    spaced = transform_file("x.us.csv", HEADER + b"2020-01-02, 1.0,2.0,0.5,1.5,5,0\n")
    assert tabbed.rejected == spaced.rejected == []
    assert output_csv_bytes(tabbed.table) == output_csv_bytes(spaced.table)


@pytest.mark.parametrize(
    "data",
    [HEADER, HEADER.rstrip(b"\n"), HEADER.replace(b"\n", b"\r\n"), HEADER.rstrip(b"\n") + b"\r"],
)
def test_a_header_only_file_is_read_as_zero_rows_with_or_without_a_newline(data):
    result = transform_file("h.us.csv", data)
    assert result.skip_reason is None  # docs/reliability.md: "header only: read with 0 rows"
    assert result.rows_read == 0 and result.rejected == [] and not lines_of(result)


def test_pandas_still_works_in_a_run_process_after_the_run_settled_pyarrows_check():
    # The run lets pyarrow's implicit "is this pandas?" check find no pandas; a user's own
    # pandas code in the same process (an asset, a notebook) must still work, both ways.
    import subprocess
    import sys

    code = (
        "import sys, pyarrow as pa\n"
        "from stock_assets.pipeline.run import _settle_pyarrow_pandas_check\n"
        "_settle_pyarrow_pandas_check()\n"
        "assert 'pandas' not in sys.modules\n"
        "frame = pa.table({'a': [1, 2]}).to_pandas()\n"
        "import pandas as pd\n"
        "assert pa.Table.from_pandas(pd.DataFrame({'a': [1, 2]})).equals(pa.table({'a': [1, 2]}))\n"
        "assert list(frame['a']) == [1, 2]\n"
        "assert pa.array(pd.Series([1.5])).to_pylist() == [1.5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
