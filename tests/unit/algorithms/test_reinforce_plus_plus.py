"""REINFORCE++ and REINFORCE++ with a group baseline."""

import math

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import (
    compute_discounted_returns,
    compute_reinforce_plus_plus_advantages,
    compute_reinforce_plus_plus_baseline_advantages,
    masked_whiten,
)


def test_reinforce_plus_plus_matches_hand_worked_example():
    # gamma = 0.5
    # row 0: rewards [0, 0, 1], all valid  -> G = [0.25, 0.5, 1]
    # row 1: rewards [0, 2, 0], last padded -> G = [1, 2, 0]
    # valid G = [0.25, 0.5, 1, 1, 2]: mean 0.95, population variance 1.8 / 5 = 0.36, std 0.6
    # A = (G - 0.95) / 0.6 = [-1.16667, -0.75, 0.08333, 0.08333, 1.75]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    result = compute_reinforce_plus_plus_advantages(rewards, mask, gamma=0.5)

    assert_close(result.returns, torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]]))
    assert_close(result.advantages, torch.tensor([[-7 / 6, -0.75, 1 / 12], [1 / 12, 1.75, 0.0]]))


def test_reinforce_plus_plus_with_unbiased_std_divides_the_variance_by_n_minus_one():
    # The example above with verl's whitening: variance 1.8 / (5 - 1) = 0.45, std 0.67082
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    result = compute_reinforce_plus_plus_advantages(rewards, mask, gamma=0.5, unbiased_std=True)

    std = math.sqrt(0.45)
    expected = torch.tensor([[-0.7, -0.45, 0.05], [0.05, 1.05, 0.0]]) / std
    expected[1, 2] = 0.0
    assert_close(result.advantages, expected)


def test_discounted_returns_skip_observation_tokens():
    # The observation token's reward (5) is ignored and costs no discount step:
    # G2 = 1, G1 (masked) = 0, G0 = 0 + 0.5 * G2 = 0.5
    rewards = torch.tensor([[0.0, 5.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])

    assert_close(compute_discounted_returns(rewards, mask, gamma=0.5), torch.tensor([[0.5, 0.0, 1.0]]))


def test_reinforce_plus_plus_counts_kl_penalties_in_the_returns():
    # Outcome 1 on the last token, per-token KL penalty 0.1 on each token, gamma 1:
    # G = [1 - 0.3, 1 - 0.2, 1 - 0.1]
    rewards = torch.tensor([[-0.1, -0.1, 0.9]])

    result = compute_reinforce_plus_plus_advantages(rewards, torch.ones(1, 3), gamma=1.0)

    assert_close(result.returns, torch.tensor([[0.7, 0.8, 0.9]]))


def test_reinforce_plus_plus_baseline_matches_hand_worked_example():
    # scores [1, 0, 1, 1], groups [0, 0, 1, 1]
    # step 1: c = [0.5, -0.5, 0, 0]
    # step 2: row 0 has 2 tokens, the others 1 -> valid values [0.5, 0.5, -0.5, 0, 0]
    # step 3: mean 0.1, population variance 0.7 / 5 = 0.14, std 0.374166
    #         A = [1.069045, 1.069045, -1.603567, -0.267261, -0.267261]
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0]])

    advantages = compute_reinforce_plus_plus_baseline_advantages(scores, [0, 0, 1, 1], mask)

    expected = torch.tensor([[1.069045, 1.069045], [-1.603567, 0.0], [-0.267261, 0.0], [-0.267261, 0.0]])
    assert_close(advantages, expected)


def test_reinforce_plus_plus_baseline_as_verl_keeps_a_lone_score_and_whitens_with_n_minus_one():
    # scores [1, 0, 3], groups [0, 0, 1]: c = [0.5, -0.5, 3] (row 2 alone keeps its score)
    # whiten over 3 tokens: mean 1, deviations [-0.5, -1.5, 2], sum of squares 6.5, std sqrt(6.5 / 2)
    advantages = compute_reinforce_plus_plus_baseline_advantages(
        torch.tensor([1.0, 0.0, 3.0]), [0, 0, 1], torch.ones(3, 1), unbiased_std=True, one_sample_group="score"
    )

    assert_close(advantages[:, 0], torch.tensor([-0.5, -1.5, 2.0]) / math.sqrt(3.25))


def test_reinforce_plus_plus_baseline_by_default_zeroes_a_lone_score_and_whitens_with_n():
    # c = [0.5, -0.5, 0]: mean 0, sum of squares 0.5, population std sqrt(0.5 / 3)
    advantages = compute_reinforce_plus_plus_baseline_advantages(
        torch.tensor([1.0, 0.0, 3.0]), [0, 0, 1], torch.ones(3, 1)
    )

    assert_close(advantages[:, 0], torch.tensor([0.5, -0.5, 0.0]) / math.sqrt(0.5 / 3))


@pytest.mark.parametrize(
    ("unbiased_std", "variance"),
    [(False, 14.0 / 4), (True, 14.0 / 3)],  # deviations from the mean 3: [-2, -1, 0, 3], squares sum to 14
)
def test_masked_whiten_divides_the_variance_by_n_or_by_n_minus_one(unbiased_std, variance):
    values = torch.tensor([[1.0, 2.0, 3.0], [6.0, float("nan"), 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])

    whitened = masked_whiten(values, mask, unbiased_std=unbiased_std)

    assert_close(whitened, torch.tensor([[-2.0, -1.0, 0.0], [3.0, 0.0, 0.0]]) / math.sqrt(variance))


def test_masked_whiten_with_unbiased_std_of_one_valid_token_is_zero_not_nan():
    whitened = masked_whiten(torch.tensor([[5.0, 7.0]]), torch.tensor([[0, 1]]), unbiased_std=True)

    assert_close(whitened, torch.zeros(1, 2))


def test_masked_whiten_of_no_valid_token_is_zero_not_nan():
    assert_close(masked_whiten(torch.randn(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))


def test_masked_whiten_ignores_nan_at_masked_positions():
    # valid [1, 3]: mean 2, population std 1 -> [-1, 1]
    values = torch.tensor([[1.0, 3.0, float("nan")]])

    assert_close(masked_whiten(values, torch.tensor([[1, 1, 0]])), torch.tensor([[-1.0, 1.0, 0.0]]))
