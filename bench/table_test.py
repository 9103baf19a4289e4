import pytest

from bench import table
from common.errors import InputError


def test_every_row_has_a_median_and_a_ratio_to_its_baseline():
    rows = [
        table.Row("bare", "tokens/s", (100.0, 120.0, 110.0)),
        table.Row("ours", "tokens/s", (121.0, 99.0, 132.0), "bare"),
    ]
    lines = table.format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["benchmark", "median", "unit", "ratio"]
    assert lines[1].split()[:5] == ["bare", "110.00", "tokens/s", "1.00", "(baseline)"]
    assert lines[2].split()[:5] == ["ours", "121.00", "tokens/s", "1.10", "bare"]


def test_rows_round_trip_through_tsv():
    row = table.Row("pipeline: warm (no-op)", "s", (1.5,), "pipeline: cold build")
    assert table.from_tsv(table.to_tsv(row), "x") == row
    with pytest.raises(InputError, match="x: runs must be numbers"):
        table.from_tsv("a\ts\t\tfast", "x")


def test_a_baseline_that_was_not_measured_is_an_error():
    with pytest.raises(InputError, match="was not measured"):
        table.format_table([table.Row("warm", "s", (1.0,), "cold")])
