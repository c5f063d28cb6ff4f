"""The fast paths (typed single-file path, batched `transform_files`, price/volume pass-through,
`format_floats`) must give exactly what the general row-by-row path and the plain Python rule
give. These tests keep that true as the code gets faster: real sample files, and generated files
full of the edge cases each fast path must either handle identically or hand back."""

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stock_assets.pipeline import fast_path, validate
from stock_assets.pipeline.combine import combine
from stock_assets.pipeline.floats import format_floats, repr_of_prices, repr_of_volumes
from stock_assets.pipeline.output import output_csv_bytes
from stock_assets.pipeline.records import FileResult
from stock_assets.pipeline.transform import transform_file, transform_files
from stock_assets_tests.conftest import SAMPLE_STOCKS
from stock_assets_tests.test_transform import reference_line

HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"

GOOD_DATES = ["2015-10-27", "2016-02-29", "2000-02-29", "1000-01-01", "9999-12-31", "1999-12-31"]
BAD_DATES = [
    "2015-02-29", "1900-02-29", "2015-04-31", "2015-13-01", "2015-00-10", "2015-01-00",
    "0000-01-01", "0999-12-31", "2015-1-02", "20150102", "2015/01/02", "", " 2015-01-02",
    "2015-01-02 ", "+2015-01-02", "2015-01-0a", "2015-01.02", "-2015-01-02",
]  # fmt: skip
GOOD_PRICES = [
    "65.17", "0.0", "0", "1", "30", "30.0", "30.00", "1.", ".5", "007.5", "0.0001", "0.00001",
    "0.000123", "1.50", "123456789012345.6", "1234567890123456", "999999999999999.9",
    "0.30000000000000004", "12.345678901234567", "100000000000000000000",
    "5e-324".replace("e-324", ""), "63.056", "1234567.0", "0.1",
]  # fmt: skip
BAD_PRICES = [
    "-1.5", "-0", "1e5", "1E5", "nan", "inf", "+1", " 1", "", ".", "1.2.3", "1,5", "0x1",
    "1" + "0" * 320,  # a decimal number, but beyond a double: it would print as inf
]  # fmt: skip
GOOD_VOLUMES = ["0", "36229", "007", "00", "1234567890"]
BAD_VOLUMES = ["-5", "-0", "1.0", "", "1e3", "+7", " 7", "x"]


def _field(rng: random.Random, good: list[str], bad: list[str], p_bad: float) -> str:
    return rng.choice(bad) if rng.random() < p_bad else rng.choice(good)


def _random_file(rng: random.Random, p_bad: float) -> bytes:
    """A file of random rows; dates mostly increasing, with the odd defect when p_bad > 0."""
    lines = []
    day = rng.randrange(0, 3000)
    for _ in range(rng.randrange(1, 30)):
        day += rng.choice([1, 1, 1, 2, 3]) if rng.random() >= p_bad else rng.choice([0, -1])
        date = (np.datetime64("2000-01-01") + day).astype(str)
        if rng.random() < p_bad:
            date = _field(rng, GOOD_DATES, BAD_DATES, 0.8)
        prices = [_field(rng, GOOD_PRICES, BAD_PRICES, p_bad) for _ in range(4)]
        volume = _field(rng, GOOD_VOLUMES, BAD_VOLUMES, p_bad)
        fields = [date, *prices, volume, "0"]
        if rng.random() < p_bad / 4:
            fields = fields[: rng.randrange(1, 7)] if rng.random() < 0.5 else [*fields, "0"]
        lines.append(",".join(fields))
    if rng.random() < p_bad:
        lines.insert(rng.randrange(len(lines) + 1), "")  # a blank line somewhere
    text = "\n".join(lines)
    if rng.random() < 0.8:
        text += "\n"
    data = HEADER + text.encode()
    if rng.random() < p_bad / 3:
        data = data.replace(b"\n", b"\r\n")
    if rng.random() < p_bad / 5:
        data += b"\n"  # a trailing blank line
    return data


def _general_only(file_name: str, data: bytes) -> FileResult:
    """The general path alone: the behaviour every fast path must reproduce."""
    result, data = validate.start(file_name, data)
    if result.skip_reason is None:
        validate.transform_general(data, result)
    return result


def _summary(result: FileResult) -> tuple:
    rows = None if result.table is None else result.table.to_pylist()
    return (
        result.file_name,
        result.bytes_read,
        result.rows_read,
        result.skip_reason,
        result.open_zero_rows,
        result.rejected,
        rows,
    )


def _files(seed: int, count: int, p_bad: float) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"f{seed}_{i}.us.csv", _random_file(rng, p_bad)) for i in range(count)]


@pytest.mark.parametrize("p_bad", [0.0, 0.02, 0.2])
@pytest.mark.parametrize("seed", range(4))
def test_fast_paths_equal_the_general_path_on_generated_files(seed, p_bad):
    files = _files(seed, 60, p_bad)
    expected = [_summary(_general_only(name, data)) for name, data in files]
    assert [_summary(transform_file(name, data)) for name, data in files] == expected
    # Small batches, so clean files share batches with defective ones.
    batched = transform_files(files, batch_bytes=2000)
    assert [_summary(r) for r in batched] == expected


def test_fast_paths_handle_each_edge_value_like_the_general_path():
    """Every listed value in every column, one file each, batched and alone."""
    files = []
    for column, values in [
        (0, GOOD_DATES + BAD_DATES),
        (1, GOOD_PRICES + BAD_PRICES),
        (4, GOOD_PRICES + BAD_PRICES),
        (5, GOOD_VOLUMES + BAD_VOLUMES),
    ]:
        for value in values:
            fields = ["2015-10-27", "1.5", "2.5", "0.5", "1.25", "100", "0"]
            fields[column] = value
            row = ",".join(fields).encode()
            files.append((f"{column}_{len(files)}.us.csv", HEADER + row + b"\n"))
            files.append(
                (f"{column}_{len(files)}.us.csv", HEADER + b"2014-01-01,1,1,1,1,1,0\n" + row)
            )
    expected = [_summary(_general_only(name, data)) for name, data in files]
    assert [_summary(transform_file(name, data)) for name, data in files] == expected
    assert [_summary(r) for r in transform_files(files, batch_bytes=1 << 20)] == expected


def test_clean_generated_files_match_the_plain_reference_line_by_line():
    files = _files(99, 40, 0.0)
    combined = combine(transform_files(files, batch_bytes=3000))
    lines = output_csv_bytes(combined.table).decode().splitlines()
    expected = [
        reference_line(line, name.split(".")[0])
        for name, data in files
        for line in data.decode().splitlines()[1:]
    ]
    assert lines == expected


def test_sample_files_batched_equal_one_by_one_and_the_reference():
    files = [(p.name, p.read_bytes()) for p in sorted(SAMPLE_STOCKS.glob("*.csv"))]
    one_by_one = [transform_file(name, data) for name, data in files]
    batched = list(transform_files(files))
    assert [_summary(r) for r in batched] == [_summary(r) for r in one_by_one]
    assert [_summary(r) for r in batched] == [_summary(_general_only(n, d)) for n, d in files]
    for (name, data), result in zip(files, batched, strict=True):
        expected = [
            reference_line(line, name.split(".")[0]) for line in data.decode().splitlines()[1:]
        ]
        got = [] if result.table is None else output_csv_bytes(result.table).decode().splitlines()
        assert got == expected, name


def test_real_sample_files_take_the_fast_path():
    """Guards the speed, not the output: real files must not silently fall back."""
    for path in sorted(SAMPLE_STOCKS.glob("*.csv")):
        data = path.read_bytes()
        if data.strip():
            result = FileResult(path.name, len(data))
            assert fast_path.transform_clean_file(data, result), path.name


def test_price_pass_through_is_repr_for_random_decimal_texts():
    rng = random.Random(5)
    texts = []
    for _ in range(20000):
        whole = str(rng.randrange(0, 10 ** rng.randrange(0, 17)))
        frac = str(rng.randrange(0, 10 ** rng.randrange(0, 12))).zfill(rng.randrange(0, 6))
        shape = rng.random()
        if shape < 0.1:
            text = whole
        elif shape < 0.15:
            text = whole + "."
        elif shape < 0.2:
            text = "." + (frac or "0")
        elif shape < 0.25:
            text = "0" + whole + "." + frac
        else:
            text = whole + "." + frac + ("0" * rng.randrange(0, 3))
        texts.append(text)
    array = pa.array(texts)
    values = pc.cast(array, pa.float64())
    assert repr_of_prices(array, values).to_pylist() == [repr(float(x)) for x in texts]
    # Sliced arrays (offsets not starting at 0) too.
    assert repr_of_prices(array.slice(7), values.slice(7)).to_pylist() == [
        repr(float(x)) for x in texts[7:]
    ]


def test_volume_pass_through_is_the_integer():
    texts = ["0", "00", "007", "10", "1234567890", "0000000000001", "5"]
    array = pa.array(texts)
    got = repr_of_volumes(array, pc.cast(array, pa.int64())).to_pylist()
    assert got == [str(int(x)) for x in texts]


def test_format_floats_edge_cases_nulls_chunks_and_slices():
    rng = np.random.default_rng(11)
    specials = [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 1e15, 1e10,
                123456789012.0, 1e22, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                np.inf, -np.inf, np.nan, 0.1, -1.983000000000004, 100.0, -26.0]  # fmt: skip
    values = np.concatenate(
        [
            specials,
            rng.standard_normal(50000) * 10.0 ** rng.integers(-20, 25, 50000),
            np.round(rng.standard_normal(20000) * 10.0 ** rng.integers(0, 18, 20000)),
            rng.integers(-(10**6), 10**6, 5000) / 1000.0,
        ]
    )
    expected = [repr(float(v)) for v in values]
    assert format_floats(values).to_pylist() == expected
    assert format_floats(pa.array(values)).to_pylist() == expected
    chunked = pa.chunked_array([values[:1000], values[1000:]])
    assert format_floats(chunked).to_pylist() == expected
    assert format_floats(pa.array(values).slice(3, 5000)).to_pylist() == expected[3:5003]
    mask = rng.random(len(values)) < 0.1
    with_nulls = pa.array(values, mask=mask)
    assert format_floats(with_nulls).to_pylist() == [
        None if m else e for m, e in zip(mask, expected, strict=True)
    ]
    assert format_floats(np.array([], dtype=float)).to_pylist() == []


def test_hostile_corpus_batched_equals_the_general_path():
    from stock_assets_tests.test_hostile_input import CORPUS

    files = [(name, data) for name, (data, *_rest) in CORPUS.items()]
    samples = [(p.name, p.read_bytes()) for p in sorted(SAMPLE_STOCKS.glob("*.csv"))]
    # Hostile files between clean ones, so they share batches.
    mixed = [item for pair in zip(samples * 3, files, strict=False) for item in pair]
    expected = [_summary(_general_only(name, data)) for name, data in mixed]
    assert [_summary(r) for r in transform_files(mixed, batch_bytes=50_000)] == expected
    assert [_summary(transform_file(name, data)) for name, data in mixed] == expected
