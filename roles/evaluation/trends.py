"""Metric series of a run and their smoothing.

A series is the (step, value) points of one metric name, in step order. Smoothing is
TensorBoard's: an exponential moving average divided by its bias correction, so the
first points are not pulled towards zero, with non-finite values passed through
unsmoothed (and left out of the average) and a constant series left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple


class Series(NamedTuple):
    """The points of one metric: steps and values, in step order."""

    steps: list[int]
    values: list[float]

    def finite(self) -> Series:
        """Only the points whose value is a finite number."""
        kept = [(step, value) for step, value in zip(self.steps, self.values) if math.isfinite(value)]
        return Series([step for step, _ in kept], [value for _, value in kept])

    def at_or_before(self, step: int) -> float | None:
        """The value at the last point at or before `step` (None: no such point)."""
        found = None
        for point, value in zip(self.steps, self.values):
            if point > step:
                break
            found = value
        return found


def series_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Series]:
    """One series per metric name from metrics.jsonl records (``{"step": N, name: value}``).

    Non-numeric fields (``source`` ...) are skipped; a name written twice for one step
    keeps the later value.
    """
    points: dict[str, dict[int, float]] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for name, value in record.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            points.setdefault(name, {})[step] = float(value)
    return {name: Series(sorted(by_step), [by_step[s] for s in sorted(by_step)]) for name, by_step in points.items()}


def debiased_ema(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing of a scalar series.

        last_t     = weight * last_{t-1} + (1 - weight) * value_t     (last_0 = 0)
        smoothed_t = last_t / (1 - weight ** t)                      (t: finite points so far)

    A non-finite value is returned as it is and does not enter the average; a series
    whose values are all equal is returned unchanged.

    Args:
        values: the raw values in step order.
        weight: smoothing weight in [0, 1); 0 returns the values themselves.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if len(values) > 0 and all(value == values[0] for value in values):
        return list(values)
    smoothed, last, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        last = last * weight + (1.0 - weight) * value
        count += 1
        smoothed.append(last / (1.0 - weight**count))
    return smoothed
