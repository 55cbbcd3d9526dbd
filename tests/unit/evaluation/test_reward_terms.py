"""Held-out accuracy counts the reward's correctness term, and every term is reported as its own number."""

from __future__ import annotations

import pytest
import torch

from protocols.batch import Batch
from protocols.rl import Scores
from roles.evaluation.summary import EvalSample, mean_terms, summarize_samples
from roles.evaluator import scored_samples
from roles.rewards import score_gsm8k


def graded(response: str, ground_truth: str, format_weight: float = 0.0) -> EvalSample:
    result = score_gsm8k("q", response, ground_truth, format_weight=format_weight)
    return EvalSample("q", response, [1], result.score, result.extracted, ground_truth, terms=result.terms)


def test_accuracy_counts_correctness_not_a_score_raised_by_the_format_weight() -> None:
    # with format_weight 0.5 a wrong "#### 71" scores 0.5 and a right "the answer is 72" scores 1.0
    samples = [graded("#### 72", "72", 0.5), graded("#### 71", "72", 0.5), graded("The answer is 72.", "72", 0.5),
               graded("no idea", "72", 0.5)]
    assert [s.score for s in samples] == [1.5, 0.5, 1.0, 0.0]

    numbers = summarize_samples(samples, correct_at=0.5, resamples=50)

    assert numbers["accuracy"] == pytest.approx(2 / 4)  # by score >= 0.5 it would be 3 / 4
    assert (numbers["correctness"], numbers["format"]) == (pytest.approx(2 / 4), pytest.approx(2 / 4))


def test_a_sample_without_terms_is_correct_by_its_score() -> None:
    samples = [EvalSample("q", "a", [1], 0.8), EvalSample("q", "b", [1], 0.2)]

    numbers = summarize_samples(samples, correct_at=0.5, resamples=50)

    assert numbers["accuracy"] == 0.5 and "correctness" not in numbers


def test_majority_votes_are_judged_by_correctness() -> None:
    samples = [graded("#### 71", "72", 0.5), graded("The answer is 72", "72", 0.5), graded("#### 72", "72", 0.5)]

    assert summarize_samples(samples, correct_at=0.5, ks=[3], resamples=50)["maj@3"] == 1.0


def test_scored_samples_carry_the_terms_of_the_reward_reply() -> None:
    batch = Batch(columns={"prompt": ["q", "q"], "response": ["#### 72", "72"], "ground_truth": ["72", "72"],
                           "prompt_index": [0, 0]},
                  tensors={"response_ids": torch.tensor([[1, 2], [3, 0]]), "response_mask": torch.tensor([[1, 1], [1, 0]]),
                           "version": torch.tensor([0, 0])})
    terms = [{"correctness": 1.0, "format": 1.0}, {"correctness": 1.0, "format": 0.0}]

    samples = scored_samples(batch, Scores([1.0, 1.0], ["72", "72"], terms))

    assert [s.terms for s in samples] == terms
    assert [s.terms for s in scored_samples(batch, Scores([1.0, 1.0], ["72", "72"]))] == [{}, {}]


def test_each_term_is_averaged_over_the_rows_that_report_it() -> None:
    # the controller logs these as train/<term>: a row without a term does not count as 0
    terms = [{"correctness": 1.0, "format": 0.0}, {"correctness": 0.0}, {}, {"correctness": 1.0, "format": 1.0}]
    assert mean_terms(terms) == {"correctness": pytest.approx(2 / 3), "format": 0.5}
    assert mean_terms([{}, {}]) == {}
