import pytest

from stock_assets.pipeline.companies import FilterFileError, company_name, parse_company_filter
from stock_assets_tests.conftest import REPO_ROOT


def test_real_filter_file_gives_1000_files_in_order():
    parsed = parse_company_filter((REPO_ROOT / "data" / "top_companies.txt").read_bytes())
    assert len(parsed.files) == 1000
    assert parsed.files[0] == "tmusp.us.csv"
    assert parsed.files[-1] == "mqt.us.csv"
    assert parsed.duplicates == [] and parsed.invalid == []


def test_duplicates_are_dropped_first_one_wins_and_reported():
    parsed = parse_company_filter(b"'b.us.csv', 'a.us.csv','b.us.csv'")
    assert parsed.files == ["b.us.csv", "a.us.csv"]
    assert parsed.duplicates == ["b.us.csv"]


def test_newlines_and_unquoted_names_are_accepted():
    parsed = parse_company_filter(b'a.us.csv\n"b.us.csv"\n\n')
    assert parsed.files == ["a.us.csv", "b.us.csv"]


@pytest.mark.parametrize(
    "entry", ["../etc/passwd.csv", "/abs/x.csv", "Stocks/a.us.csv", "notes.txt", ".hidden.csv"]
)
def test_unsafe_or_non_csv_names_are_refused_with_a_reason(entry):
    parsed = parse_company_filter(f"'a.us.csv', '{entry}'".encode())
    assert parsed.files == ["a.us.csv"]
    assert [i.entry for i in parsed.invalid] == [entry]
    assert parsed.invalid[0].reason


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("ABC.CSV", "lower case"),
        ("a" * 57 + ".us.csv", "over 56 characters"),  # would not fit company_name VARCHAR(56)
    ],
)
def test_names_the_pipeline_could_not_load_are_refused_with_the_real_reason(entry, reason):
    parsed = parse_company_filter(f"'a.us.csv', '{entry}'".encode())
    assert parsed.files == ["a.us.csv"]
    [invalid] = parsed.invalid
    assert invalid.entry == entry and reason in invalid.reason
    assert parse_company_filter(f"'{'a' * 56}.us.csv'".encode()).invalid == []


@pytest.mark.parametrize("content", [b"", b"   \n\t ", b"'', ''"])
def test_blank_filter_is_a_clear_error(content):
    with pytest.raises(FilterFileError, match="names no files"):
        parse_company_filter(content)


def test_more_entries_than_the_limit_is_refused_before_any_work():
    names = ", ".join(f"'c{i}.us.csv'" for i in range(1001)).encode()
    with pytest.raises(FilterFileError, match="1001 distinct files; the limit is 1000"):
        parse_company_filter(names)
    assert len(parse_company_filter(names, max_entries=1001).files) == 1001


def test_company_name_is_the_file_name_up_to_the_first_dot():
    assert company_name("tmusp.us.csv") == "tmusp"
    assert company_name("gs_i-cl.us.csv") == "gs_i-cl"
