"""runtime.statistics.percentile: nearest rank, against hand-computed ranks."""

from __future__ import annotations

import pytest

from runtime.statistics import percentile


def test_a_percentile_is_the_value_at_the_nearest_rank_of_the_sorted_values():
    values = [40.0, 15.0, 50.0, 35.0, 20.0]  # sorted: 15 20 35 40 50
    assert percentile(values, 50) == 35.0  # rank ceil(2.5) = 3
    assert percentile(values, 99) == 50.0  # rank ceil(4.95) = 5
    assert percentile(values, 25) == 20.0  # rank ceil(1.25) = 2
    assert percentile(values, 20) == 15.0  # rank ceil(1.0) = 1: an exact rank is not rounded up
    assert percentile(values, 100) == 50.0  # rank 5
    assert percentile(values, 0.1) == 15.0  # rank ceil(0.005) = 1


def test_a_percentile_is_always_one_of_the_values_never_an_interpolation():
    assert percentile([1.0, 2.0], 50) == 1.0  # rank ceil(1.0) = 1; interpolating would give 1.5
    assert percentile([1.0, 2.0], 51) == 2.0  # rank ceil(1.02) = 2
    hundred = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(hundred, 50) == 50.0 and percentile(hundred, 99) == 99.0 and percentile(hundred, 99.5) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_integers_and_tuples_are_accepted_and_a_float_comes_back():
    result = percentile((3, 1, 2), 50)  # sorted 1 2 3, rank ceil(1.5) = 2
    assert result == 2.0 and isinstance(result, float)


def test_no_values_raise():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@pytest.mark.parametrize("percent", [0, -1, 100.5, 200])
def test_a_percent_outside_zero_to_a_hundred_raises(percent):
    with pytest.raises(ValueError, match="percent must be in"):
        percentile([1.0, 2.0, 3.0], percent)
