"""pass@k, majority voting, mean@k and bootstrap intervals against hand-computed values."""

import math
from fractions import Fraction

import numpy as np
import pytest

from roles.evaluation import (
    BootstrapInterval,
    bootstrap_ci,
    maj_at_k,
    majority_vote,
    mean_at_k,
    mean_pass_at_k,
    pass_at_k,
)


def exact_pass_at_k(n, c, k):
    # 1 - C(n-c, k) / C(n, k) in exact rational arithmetic; math.comb(m, k) is 0 for k > m.
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


CASES = [(n, c, k) for n in (1, 2, 5, 10, 16) for c in range(n + 1) for k in range(1, n + 1)] + [
    (200, 0, 1),
    (200, 1, 1),
    (200, 1, 100),
    (200, 37, 10),
    (200, 150, 50),
    (200, 3, 200),
    (2000, 5, 100),  # C(2000, 100) ~ 1e171 and C(2000, 1000) ~ 1e600 overflow a float
    (2000, 400, 1000),
    (2000, 1, 1999),
]


@pytest.mark.parametrize("n,c,k", CASES)
def test_pass_at_k_matches_exact_combinatorial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=0, abs=1e-12)


def test_pass_at_k_hand_worked_values():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5;  k=1 is the fraction correct.
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_is_exactly_one_when_every_k_subset_holds_a_correct_sample():
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k = 3
    assert pass_at_k(5, 5, 1) == 1.0


def test_pass_at_k_is_exactly_zero_with_no_correct_sample():
    assert pass_at_k(200, 0, 100) == 0.0


@pytest.mark.parametrize(
    "n,c,k,field",
    [(3, 1, 4, "k=4"), (3, 4, 1, "c="), (3, -1, 1, "c="), (3, 1, 0, "k"), (3, 1, -2, "k"), (0, 0, 1, "n")],
)
def test_pass_at_k_rejects_impossible_counts_naming_the_argument(n, c, k, field):
    with pytest.raises(ValueError, match=field):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_over_problems():
    # pass@2: (4,1) -> 0.5, (4,0) -> 0, (4,4) -> 1
    assert mean_pass_at_k([(4, 1), (4, 0), (4, 4)], 2) == pytest.approx(0.5)


def test_mean_pass_at_k_rejects_no_problems():
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], 1)


def test_majority_vote_picks_the_most_frequent_answer():
    assert majority_vote(["3", "4", "4", "3", "4"]) == "4"


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["a", "b", "b", "a"]) == "a"
    assert majority_vote(["c", "a", "b"]) == "c"


def test_majority_vote_never_lets_none_beat_a_real_answer():
    assert majority_vote([None, None, None, "7"]) == "7"
    assert majority_vote([None, "1", None, "2", "2"]) == "2"


def test_majority_vote_is_none_only_when_all_answers_are_none():
    assert majority_vote([None, None]) is None


def test_majority_vote_rejects_no_answers():
    with pytest.raises(ValueError, match="empty"):
        majority_vote([])


def test_maj_at_k_votes_with_the_first_k_samples_only():
    answers = ["1", "2", "2", "1", "1", "1"]

    def is_one(answer):
        return answer == "1"

    assert maj_at_k(answers, is_one, 3) == 0.0  # "2" wins 2 to 1
    assert maj_at_k(answers, is_one, 6) == 1.0
    assert maj_at_k(answers, is_one, 1) == 1.0


def test_maj_at_k_is_wrong_when_no_answer_was_extracted():
    assert maj_at_k([None, None], lambda answer: True, 2) == 0.0


def test_maj_at_k_rejects_k_beyond_the_samples():
    with pytest.raises(ValueError, match="k=3"):
        maj_at_k(["1", "2"], lambda answer: True, 3)


def test_mean_at_k_averages_the_first_k_scores():
    assert mean_at_k([1.0, 0.0, 1.0, 1.0], 2) == pytest.approx(0.5)
    assert mean_at_k([1.0, 0.0, 1.0, 1.0], 4) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="k=5"):
        mean_at_k([1.0, 0.0, 1.0, 1.0], 5)


VALUES = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.25, 0.75, 1.0, 0.0, 0.5]


def test_bootstrap_ci_is_deterministic_for_a_seed():
    assert bootstrap_ci(VALUES, seed=3) == bootstrap_ci(VALUES, seed=3)
    assert bootstrap_ci(VALUES, seed=3) != bootstrap_ci(VALUES, seed=4)


def test_bootstrap_ci_interval_contains_the_estimate():
    estimate, low, high = bootstrap_ci(VALUES)

    assert estimate == pytest.approx(np.mean(VALUES))
    assert low < estimate < high
    assert 0.0 <= low and high <= 1.0


def test_bootstrap_ci_widens_with_confidence():
    narrow = bootstrap_ci(VALUES, confidence=0.5)
    wide = bootstrap_ci(VALUES, confidence=0.99)

    assert wide.low < narrow.low and narrow.high < wide.high


def test_bootstrap_ci_of_constant_values_is_a_point():
    assert bootstrap_ci([0.7] * 5) == BootstrapInterval(pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_ci_accepts_any_statistic():
    estimate, low, high = bootstrap_ci(VALUES, statistic=np.median, resamples=200)

    assert estimate == pytest.approx(np.median(VALUES))
    assert low <= estimate <= high


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"values": []}, "empty"),
        ({"values": [1.0], "confidence": 1.0}, "confidence"),
        ({"values": [1.0], "confidence": 0.0}, "confidence"),
        ({"values": [1.0], "resamples": 0}, "resamples"),
    ],
)
def test_bootstrap_ci_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def test_paired_bootstrap_of_a_constant_shift() -> None:
    from roles.evaluation.accuracy import paired_bootstrap

    a = [0.1 * i for i in range(20)]
    result = paired_bootstrap(a, [value + 0.25 for value in a])
    assert result.difference == pytest.approx(0.25) and result.low == pytest.approx(0.25) and result.high == pytest.approx(0.25)
    assert result.p_value == 0.0 and result.pairs == 20


def test_paired_bootstrap_sees_through_shared_item_difficulty() -> None:
    from roles.evaluation.accuracy import paired_bootstrap

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 200)  # large spread between items, common to both systems
    a = difficulty
    b = difficulty + rng.normal(0.05, 0.02, 200)
    result = paired_bootstrap(a, b, seed=1)
    assert 0.04 < result.low < result.difference < result.high < 0.06 and result.p_value < 0.01


def test_paired_bootstrap_of_no_difference_and_bad_input() -> None:
    from roles.evaluation.accuracy import paired_bootstrap

    same = paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert same.difference == 0.0 and same.p_value == 1.0
    noisy = paired_bootstrap([0, 1, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 1, 1, 0], seed=3)
    assert noisy.low < 0 < noisy.high and noisy.p_value > 0.2
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
