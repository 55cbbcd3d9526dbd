"""summarize_samples: every evaluation number of scored samples, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from roles.evaluation import distinct_n, pass_at_k
from roles.evaluation.summary import EvalSample, default_ks, group_samples, summarize_samples


def sample(prompt: str, response: str, score: float, extracted: str | None = None, ids: list[int] | None = None) -> EvalSample:
    return EvalSample(prompt, response, ids if ids is not None else [ord(c) for c in response], score,
                      extracted if extracted is not None else response, ground_truth="?", weights_version=3)


TWO_PROMPTS = [  # prompt a: 2 of 4 right; prompt b: 1 of 4 right, the majority ("9") wrong
    sample("a", "7", 1.0), sample("a", "8", 0.0), sample("a", "7", 1.0), sample("a", "6", 0.0),
    sample("b", "9", 0.0), sample("b", "9", 0.0), sample("b", "5", 1.0), sample("b", "4", 0.0),
]


def test_accuracy_pass_maj_and_mean_at_k_by_hand() -> None:
    numbers = summarize_samples(TWO_PROMPTS, resamples=200)
    assert numbers["samples"] == 8 and numbers["prompts"] == 2 and numbers["samples_per_prompt"] == 4
    assert numbers["accuracy"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert numbers["pass@1"] == pytest.approx(numbers["accuracy"])
    assert numbers["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert numbers["pass@4"] == 1.0
    # maj@1: first sample of each ("7" right, "9" wrong); maj@2: "7"/"8" tie -> "7" first (right), "9" wrong;
    # maj@4: a: "7" twice (right); b: "9" twice (wrong)
    assert numbers["maj@1"] == 0.5 and numbers["maj@2"] == 0.5 and numbers["maj@4"] == 0.5
    assert numbers["mean@1"] == pytest.approx((1 + 0) / 2) and numbers["mean@2"] == pytest.approx((0.5 + 0) / 2)
    assert numbers["accuracy_ci_low"] <= numbers["accuracy"] <= numbers["accuracy_ci_high"]


def test_reward_numbers_by_hand() -> None:
    numbers = summarize_samples(TWO_PROMPTS, resamples=200)
    scores = [s.score for s in TWO_PROMPTS]
    mean = sum(scores) / 8
    assert numbers["reward"] == pytest.approx(mean)
    assert numbers["reward_std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores) / 8))
    assert (numbers["reward_min"], numbers["reward_max"]) == (0.0, 1.0)
    assert 0.25 <= numbers["reward_ci_low"] <= numbers["reward_ci_high"] <= 0.5  # per-prompt means are 0.5 and 0.25


def test_a_correct_at_threshold_changes_what_counts() -> None:
    graded = [sample("a", "x", 0.6), sample("a", "y", 0.4)]
    assert summarize_samples(graded, correct_at=0.5, resamples=50)["accuracy"] == 0.5
    assert summarize_samples(graded, correct_at=0.7, resamples=50)["accuracy"] == 0.0


def test_diversity_on_tokens_and_words_within_and_across() -> None:
    samples = [sample("a", "x y x y", 1.0, ids=[1, 2, 1, 2]), sample("a", "x y z", 1.0, ids=[1, 2, 3]),
               sample("b", "x y x y", 0.0, ids=[1, 2, 1, 2]), sample("b", "q", 0.0, ids=[9])]
    numbers = summarize_samples(samples, resamples=50)
    # tokens, within: a = [1,2,1,2],[1,2,3] -> bigrams 12 21 12 | 12 23: 3 unique / 5; b: 12 21 12: 2 / 3
    assert numbers["distinct_2_tokens_within"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert numbers["distinct_2_tokens_across"] == pytest.approx(distinct_n([[1, 2, 1, 2], [1, 2, 3], [1, 2, 1, 2], [9]], 2))
    assert numbers["distinct_1_words_across"] == pytest.approx(4 / 12)  # x y z q of 12 words
    # seq-rep-2 per response: 1 - 2/3, 0, 1 - 2/3, 0 (a 1-token response has no bigram: 0)
    assert numbers["seq_rep_2_tokens"] == pytest.approx((1 / 3 + 1 / 3) / 4)
    assert numbers["self_bleu_tokens_across_samples"] == 4
    assert 0.0 < numbers["compression_ratio_across"]


def test_self_bleu_within_needs_two_samples_of_a_prompt() -> None:
    numbers = summarize_samples([sample("a", "x y", 1.0), sample("b", "x z", 0.0)], resamples=20)
    assert "self_bleu_words_within" not in numbers and "self_bleu_words_across" in numbers


def test_groups_follow_the_group_key_and_first_appearance() -> None:
    keyed = [EvalSample("p", "r1", [1], 1.0, group=2), EvalSample("p", "r2", [2], 0.0, group=1), EvalSample("p", "r3", [3], 1.0, group=2)]
    assert [[s.response for s in g] for g in group_samples(keyed)] == [["r1", "r3"], ["r2"]]


def test_ks_default_to_the_smallest_group_and_a_larger_k_is_refused() -> None:
    uneven = TWO_PROMPTS[:4] + TWO_PROMPTS[4:6]  # 4 and 2 samples
    numbers = summarize_samples(uneven, resamples=20)
    assert "pass@2" in numbers and "pass@4" not in numbers
    with pytest.raises(ValueError, match="smallest group has 2"):
        summarize_samples(uneven, ks=[4])
    assert default_ks(1) == [1] and default_ks(6) == [1, 2, 4, 6] and default_ks(8) == [1, 2, 4, 8]


def test_edge_cases() -> None:
    with pytest.raises(ValueError, match="no samples"):
        summarize_samples([])
    single = summarize_samples([sample("a", "", 0.0, ids=[])], resamples=10)
    assert single["accuracy"] == 0.0 and single["distinct_1_tokens_across"] == 0.0 and single["seq_rep_1_words"] == 0.0
    same = summarize_samples([sample("a", "z z", 1.0)] * 3, resamples=10)
    assert same["distinct_1_words_within"] == pytest.approx(1 / 6) and same["self_bleu_words_within"] == pytest.approx(1.0)
    assert all(math.isfinite(value) for value in same.values())


def test_as_record_is_a_dump_line() -> None:
    assert sample("a", "7", 1.0).as_record() == {"prompt": "a", "response": "7", "extracted": "7", "ground_truth": "?",
                                                 "score": 1.0, "terms": {}, "weights_version": 3}
