"""One percentile for the whole code base (latency tables, load tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank `percent`-th percentile (0 < percent <= 100): the smallest value
    with at least ``percent``% of `values` at or below it, i.e.
    ``sorted(values)[ceil(percent / 100 * n) - 1]`` (numpy's ``inverted_cdf``). Always one
    of the values, never an interpolation between two.

    Raises:
        ValueError: `values` is empty, or `percent` is outside (0, 100].
    """
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), percent, method="inverted_cdf"))
