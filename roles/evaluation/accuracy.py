"""Accuracy metrics over several samples per problem: pass@k, maj@k, mean@k, bootstrap CIs.

An evaluation samples n responses per problem and scores each one. These functions turn
those per-sample results into per-problem numbers and a confidence interval over
problems. pass@k uses the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code") in its product form, which never forms a binomial
coefficient and so stays exact in floating point for any n. maj@k and mean@k read the
first k samples in sample order, so a caller that sampled n >= k responses gets the same
number as if it had sampled exactly k.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


def _check_k(k: int, available: int, what: str) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    if k > available:
        raise ValueError(f"k={k} is larger than the {available} {what} given; sample at least k responses per problem")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the probability that at least one of k samples is correct.

    With n samples of which c are correct:
        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)
    The product form avoids binomial coefficients, which overflow floats for large n.

    Args:
        n: number of samples drawn for the problem, n >= 1.
        c: number of those samples that are correct, 0 <= c <= n.
        k: number of attempts the metric allows, 1 <= k <= n.

    Returns:
        The estimate in [0, 1]; exactly 1.0 when n - c < k (every k-subset holds a
        correct sample) and exactly 0.0 when c == 0.
    """
    if n < 1:
        raise ValueError(f"n (samples per problem) must be at least 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be between 0 and n={n}, got c={c}")
    _check_k(k, n, "samples (n)")
    if n - c < k:
        return 1.0
    probability_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        probability_all_wrong *= 1.0 - k / i
    return 1.0 - probability_all_wrong


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems.

    Args:
        counts: one (n, c) pair per problem: samples drawn and samples correct.
        k: number of attempts, at most every problem's n.

    Returns:
        The mean of pass_at_k(n, c, k) over the problems.
    """
    if len(counts) == 0:
        raise ValueError("counts is empty; pass one (n, c) pair per problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, with a fixed tie rule.

    None stands for a sample whose answer could not be extracted; it never wins over
    a real answer, however often it occurs. Among the real answers with the highest
    count, the one that occurs first in sample order wins, so the result depends only
    on the samples and their order, never on hashing.

    Args:
        answers: one extracted answer per sample, in sample order; non-empty.

    Returns:
        The winning answer, or None when every answer is None.
    """
    if len(answers) == 0:
        raise ValueError("answers is empty; pass at least one sample's answer")
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None
    highest = max(counts.values())
    # Counter keeps first-insertion order, so the first answer reaching the highest
    # count in iteration order is the one that appears first in the samples.
    return next(answer for answer, count in counts.items() if count == highest)


def maj_at_k(answers: Sequence[str | None], is_correct: Callable[[str], bool], k: int) -> float:
    """1.0 if the majority answer of the first k samples is correct, else 0.0.

    Args:
        answers: one extracted answer per sample, in sample order, at least k of them.
        is_correct: judges an answer against the problem's ground truth.
        k: number of samples that vote.

    Returns:
        1.0 or 0.0 (a float, so that it averages over problems); 0.0 when all k
        answers are None. Ties follow majority_vote.
    """
    _check_k(k, len(answers), "answers")
    winner = majority_vote(answers[:k])
    return 1.0 if winner is not None and is_correct(winner) else 0.0


def mean_at_k(scores: Sequence[float], k: int) -> float:
    """Mean score of the first k samples (avg@k).

    Args:
        scores: one score per sample, in sample order, at least k of them.
        k: number of samples averaged.
    """
    _check_k(k, len(scores), "scores")
    return float(sum(scores[:k]) / k)


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


class BootstrapInterval(NamedTuple):
    """A statistic and its bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the original values.
        low: lower percentile bound of the interval.
        high: upper percentile bound of the interval.
    """

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap confidence interval of a statistic over values.

    Draws `resamples` resamples of the values with replacement, computes the statistic
    on each, and takes the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of
    those. The generator is numpy's default_rng(seed), so equal arguments give equal
    intervals.

    Args:
        values: [N] per-problem values (for example per-problem pass@k), N >= 1.
        statistic: maps a float array [N] to a number; the mean by default.
        resamples: number of bootstrap resamples, >= 1.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling generator.

    Returns:
        BootstrapInterval(estimate, low, high), a tuple.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {data.shape}")
    if data.size == 0:
        raise ValueError("values is empty; a confidence interval needs at least one value")
    _check_bootstrap(resamples, confidence)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(resamples, data.size))
    replicates = np.array([statistic(data[row]) for row in indices], dtype=np.float64)
    return BootstrapInterval(float(statistic(data)), *_percentile_interval(replicates, confidence))


class PairedDifference(NamedTuple):
    """The mean difference b - a over paired items, its bootstrap interval and p-value.

    Attributes:
        difference: mean(b - a) on the original pairs.
        low: lower percentile bound of the interval.
        high: upper percentile bound of the interval.
        p_value: two-sided bootstrap p-value of "no difference": twice the share of
            resampled differences on the other side of zero from `difference` (a
            resampled difference of exactly zero counts half), capped at 1.
        pairs: number of paired items.
    """

    difference: float
    low: float
    high: float
    p_value: float
    pairs: int


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Paired bootstrap test of the mean difference between two systems on the same items.

    `a[i]` and `b[i]` are the two systems' values on item i (for example per-problem
    accuracy on a shared eval set). Items are resampled with replacement, both values
    of an item together, so the variation between items common to both systems cancels.

    Args:
        a, b: [N] values of the two systems, in the same item order, N >= 1.
        resamples: bootstrap resamples, >= 1.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of numpy's default_rng.

    Returns:
        PairedDifference(difference, low, high, p_value, pairs).
    """
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"a and b must be one-dimensional and of equal length, got {first.shape} and {second.shape}")
    if first.size == 0:
        raise ValueError("a and b are empty; a paired test needs at least one item")
    _check_bootstrap(resamples, confidence)
    deltas = second - first
    rng = np.random.default_rng(seed)
    replicates = deltas[rng.integers(0, deltas.size, size=(resamples, deltas.size))].mean(axis=1)
    observed = float(deltas.mean())
    low, high = _percentile_interval(replicates, confidence)
    if observed == 0.0:
        p_value = 1.0
    else:
        other_side = np.sum(replicates * np.sign(observed) < 0) + 0.5 * np.sum(replicates == 0)
        p_value = min(1.0, 2.0 * float(other_side) / resamples)
    return PairedDifference(observed, low, high, p_value, int(deltas.size))
