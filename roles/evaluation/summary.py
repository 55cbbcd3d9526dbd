"""Every evaluation number of a set of scored samples, in one call.

An evaluation samples n responses for each held-out prompt, scores each one with the
reward functions (which also extract the answer), and hands the samples here.
`summarize_samples` groups them by prompt and returns flat names (the caller adds the
``eval/`` prefix):

reward          ``reward`` (mean over samples), ``reward_std``, ``reward_min``,
                ``reward_max``, ``reward_ci_low`` / ``reward_ci_high`` (bootstrap over
                prompts of the per-prompt mean reward)
accuracy        ``accuracy``: mean over prompts of the share of correct samples (the
                reward's ``correctness`` term where it reports one, else score >=
                correct_at), with ``_ci_low`` / ``_ci_high``;
                ``pass@k``, ``maj@k``, ``mean@k`` for each k, each with a CI
terms           per reward term the samples report (``correctness``, ``format``):
                ``<term>``, its mean over the samples that report it
diversity       per unit (``tokens``: token ids, ``words``: whitespace words) and
                n = 1..4: ``distinct_{n}_{unit}_within`` / ``_across``,
                ``ngram_entropy_{n}_{unit}_within`` / ``_across`` (nats),
                ``seq_rep_{n}_{unit}`` (mean over responses);
                ``self_bleu_{unit}_within`` (prompts with 2+ samples only) / ``_across`` with
                ``self_bleu_{unit}_across_samples`` (hypotheses scored);
                ``compression_ratio_within`` / ``_across`` (UTF-8 bytes)

"within" is the mean over prompts of the metric on that prompt's samples, "across" the
metric on every sample pooled. docs/evaluation.md defines each one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roles.evaluation.accuracy import bootstrap_ci, maj_at_k, mean_at_k, pass_at_k
from roles.evaluation.diversity import (
    Tokens,
    compression_ratio,
    distinct_n,
    mean_seq_rep_n,
    ngram_entropy,
    self_bleu,
    within_and_across,
    words,
)

NGRAM_ORDERS = (1, 2, 3, 4)


@dataclass(frozen=True)
class EvalSample:
    """One scored response to a held-out prompt."""

    prompt: str
    response: str
    response_ids: Sequence[int]
    score: float
    extracted: str | None = None
    """The answer the reward function read from the response (None: none found)."""
    ground_truth: Any = None
    weights_version: int = -1
    group: Hashable | None = None
    """Which prompt's samples this belongs to (None: the prompt text)."""
    terms: dict[str, float] = field(default_factory=dict)
    """The reward terms behind the score (``correctness``, ``format``; empty: none reported)."""

    def is_correct(self, correct_at: float) -> bool:
        """The reward's ``correctness`` term when it reports one, else score >= ``correct_at``."""
        if "correctness" in self.terms:
            return self.terms["correctness"] >= 1.0
        return self.score >= correct_at

    def as_record(self) -> dict[str, Any]:
        """The sample as a line of ``eval/step_N.jsonl``."""
        return {"prompt": self.prompt, "response": self.response, "extracted": self.extracted,
                "ground_truth": self.ground_truth, "score": self.score, "terms": self.terms,
                "weights_version": self.weights_version}


def group_samples(samples: Sequence[EvalSample]) -> list[list[EvalSample]]:
    """The samples grouped by prompt, groups in order of first appearance, samples in order."""
    groups: dict[Hashable, list[EvalSample]] = {}
    for sample in samples:
        groups.setdefault(sample.group if sample.group is not None else sample.prompt, []).append(sample)
    return list(groups.values())


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []
    return ks + [n] if n not in ks else ks


def summarize_samples(
    samples: Sequence[EvalSample],
    correct_at: float = 1.0,
    ks: Sequence[int] | None = None,
    self_bleu_sample: int | None = 128,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Reward, accuracy and diversity numbers of scored samples (names in the module doc).

    Args:
        samples: the scored responses, several per prompt (grouped by `EvalSample.group`).
        correct_at: a sample is correct when its score is at least this.
        ks: the k of pass@k, maj@k and mean@k (default `default_ks` of the smallest
            group); every k must be at most the smallest group's size.
        self_bleu_sample: hypotheses scored by self-BLEU per set (None: all of them).
        resamples: bootstrap resamples of every confidence interval.
        seed: seed of the bootstrap and of self-BLEU's sample.
    """
    if len(samples) == 0:
        raise ValueError("no samples to summarize")
    groups = group_samples(samples)
    smallest = min(len(group) for group in groups)
    ks = list(ks) if ks is not None else default_ks(smallest)
    for k in ks:
        if not 1 <= k <= smallest:
            raise ValueError(f"k={k} needs at least k samples for every prompt; the smallest group has {smallest}")
    numbers: dict[str, float] = {
        "samples": float(len(samples)), "prompts": float(len(groups)), "samples_per_prompt": float(smallest),
    }
    numbers.update(_reward_numbers(samples, groups, resamples, seed))
    numbers.update(term_numbers(samples))
    numbers.update(_accuracy_numbers(groups, correct_at, ks, resamples, seed))
    numbers.update(diversity_numbers(groups, self_bleu_sample, seed))
    return numbers


def _with_ci(name: str, values: Sequence[float], resamples: int, seed: int) -> dict[str, float]:
    interval = bootstrap_ci(values, resamples=resamples, seed=seed)
    return {name: interval.estimate, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}


def _reward_numbers(samples: Sequence[EvalSample], groups: list[list[EvalSample]], resamples: int, seed: int) -> dict[str, float]:
    scores = np.array([sample.score for sample in samples], dtype=np.float64)
    per_prompt = [float(np.mean([sample.score for sample in group])) for group in groups]
    interval = bootstrap_ci(per_prompt, resamples=resamples, seed=seed)
    return {
        "reward": float(scores.mean()), "reward_std": float(scores.std()), "reward_min": float(scores.min()),
        "reward_max": float(scores.max()), "reward_ci_low": interval.low, "reward_ci_high": interval.high,
    }


def _accuracy_numbers(groups: list[list[EvalSample]], correct_at: float, ks: Sequence[int], resamples: int,
                      seed: int) -> dict[str, float]:
    correct = [[1.0 if sample.is_correct(correct_at) else 0.0 for sample in group] for group in groups]
    numbers = _with_ci("accuracy", [sum(row) / len(row) for row in correct], resamples, seed)
    for k in ks:
        numbers.update(_with_ci(f"pass@{k}", [pass_at_k(len(row), int(sum(row)), k) for row in correct], resamples, seed))
        numbers.update(_with_ci(f"mean@{k}", [mean_at_k(row, k) for row in correct], resamples, seed))
        numbers.update(_with_ci(f"maj@{k}", [maj_at_k([s.extracted for s in group], _judge(group, correct_at), k)
                                             for group in groups], resamples, seed))
    return numbers


def _judge(group: list[EvalSample], correct_at: float) -> Any:
    """An extracted answer is correct when a sample that gave it was scored correct (the
    reward function is the judge of equivalence, so votes use the same judgement)."""
    right = {sample.extracted for sample in group if sample.extracted is not None and sample.is_correct(correct_at)}
    return right.__contains__


def term_numbers(samples: Sequence[EvalSample]) -> dict[str, float]:
    """The mean of each reward term over the samples that report it (``correctness``, ``format``)."""
    return mean_terms([sample.terms for sample in samples])


def mean_terms(terms: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each named reward term over the rows that report it."""
    values: dict[str, list[float]] = {}
    for row in terms:
        for name, value in row.items():
            values.setdefault(name, []).append(value)
    return {name: float(np.mean(found)) for name, found in values.items()}


def diversity_numbers(groups: Sequence[Sequence[EvalSample]], self_bleu_sample: int | None = 128, seed: int = 0) -> dict[str, float]:
    """Distinct-n, n-gram entropy, seq-rep-n and self-BLEU on token ids and on words, and
    the compression ratio of the texts, within each prompt's group and across all."""
    units: dict[str, list[list[Tokens]]] = {
        "tokens": [[list(sample.response_ids) for sample in group] for group in groups],
        "words": [[words(sample.response) for sample in group] for group in groups],
    }
    numbers: dict[str, float] = {}
    for unit, sequences in units.items():
        pooled = [sequence for group in sequences for sequence in group]
        for n in NGRAM_ORDERS:
            for name, metric in (("distinct", distinct_n), ("ngram_entropy", ngram_entropy)):
                both = within_and_across(sequences, lambda group, metric=metric, n=n: metric(group, n))
                numbers[f"{name}_{n}_{unit}_within"] = both["within"]
                numbers[f"{name}_{n}_{unit}_across"] = both["across"]
            numbers[f"seq_rep_{n}_{unit}"] = mean_seq_rep_n(pooled, n)
        scored_groups = [group for group in sequences if len(group) >= 2]  # one sample has no other to compare with
        if scored_groups:
            numbers[f"self_bleu_{unit}_within"] = float(np.mean([self_bleu(group, sample_size=self_bleu_sample, seed=seed)[0]
                                                                  for group in scored_groups]))
        across, scored = self_bleu(pooled, sample_size=self_bleu_sample, seed=seed)
        numbers[f"self_bleu_{unit}_across"] = across
        numbers[f"self_bleu_{unit}_across_samples"] = float(scored)
    texts = [[sample.response for sample in group] for group in groups]
    both = within_and_across(texts, compression_ratio)
    numbers["compression_ratio_within"], numbers["compression_ratio_across"] = both["within"], both["across"]
    return numbers
