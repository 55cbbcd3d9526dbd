"""GAE over policy tokens: the recursion, masking of observation tokens, whitening."""

import math

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import compute_gae


def test_gae_matches_hand_worked_example():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; V = 0 after the last token.
    # t=2: delta = 1 + 0.9*0   - 0.6 =  0.40;  A2 = 0.40
    # t=1: delta = 0 + 0.9*0.6 - 0.4 =  0.14;  A1 = 0.14 + 0.72*0.40  = 0.428
    # t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14;  A0 = -0.14 + 0.72*0.428 = 0.16816
    # returns = A + V = [0.66816, 0.828, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.6]])
    mask = torch.ones(1, 3)

    result = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)

    assert_close(result.advantages, torch.tensor([[0.16816, 0.428, 0.4]]))
    assert_close(result.returns, torch.tensor([[0.66816, 0.828, 1.0]]))


def test_gae_skips_masked_observation_tokens():
    # The same three policy tokens as the hand-worked example, with a tool
    # observation token (reward 99, value 123) between the first two and a padding
    # token (value inf) at the end: the observation and padding must not change anything.
    rewards = torch.tensor([[0.0, 99.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 123.0, 0.4, 0.6, float("inf")]])
    mask = torch.tensor([[True, False, True, True, False]])

    result = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)

    assert_close(result.advantages, torch.tensor([[0.16816, 0.0, 0.428, 0.4, 0.0]]))
    assert_close(result.returns, torch.tensor([[0.66816, 0.0, 0.828, 1.0, 0.0]]))


def test_gae_with_lambda_and_gamma_one_is_reward_to_go_minus_value():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 6, generator=generator)
    values = torch.randn(3, 6, generator=generator)
    mask = torch.ones(3, 6)

    result = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)

    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    assert_close(result.advantages, reward_to_go - values)
    assert_close(result.returns, reward_to_go)


def test_gae_with_lambda_zero_is_one_step_td_error():
    rewards = torch.tensor([[0.5, -1.0, 2.0]])
    values = torch.tensor([[1.0, 2.0, 3.0]])

    result = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.0)

    # delta_t = r_t + 0.5 * V_{t+1} - V_t with V_3 = 0
    assert_close(result.advantages, torch.tensor([[0.5 + 1.0 - 1.0, -1.0 + 1.5 - 2.0, 2.0 - 3.0]]))


def test_gae_whitening_uses_only_valid_tokens_and_leaves_returns_raw():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 9.0], [0.1, 0.2, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    raw = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)

    whitened = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8, whiten=True)

    valid_raw = raw.advantages[mask.bool()]
    expected = (valid_raw - valid_raw.mean()) / (valid_raw.std(unbiased=False) + 1e-8)
    assert_close(whitened.advantages[mask.bool()], expected)
    assert_close(whitened.advantages[~mask.bool()], torch.zeros(3))
    assert_close(whitened.returns, raw.returns)


def test_gae_whitening_with_unbiased_std_divides_the_variance_by_n_minus_one():
    # V = 0, gamma = lam = 1: A = reward-to-go = [[1, 1], [3, 0]], mean 1.25,
    # deviations [-0.25, -0.25, 1.75, -1.25], sum of squares 4.75, variance 4.75 / 3
    rewards = torch.tensor([[0.0, 1.0], [3.0, 0.0]])

    result = compute_gae(rewards, torch.zeros(2, 2), torch.ones(2, 2), 1.0, 1.0, whiten=True, unbiased_std=True)

    assert_close(result.advantages, torch.tensor([[-0.25, -0.25], [1.75, -1.25]]) / math.sqrt(4.75 / 3))
    assert_close(result.returns, torch.tensor([[1.0, 1.0], [3.0, 0.0]]))


def test_gae_result_carries_no_gradient():
    values = torch.tensor([[0.5, 0.4]], requires_grad=True)

    result = compute_gae(torch.zeros(1, 2), values, torch.ones(1, 2), gamma=1.0, lam=1.0)

    assert not result.advantages.requires_grad
    assert not result.returns.requires_grad


def test_gae_rejects_values_of_another_shape():
    with pytest.raises(ValueError, match="values=\\(1, 3\\)"):
        compute_gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), gamma=1.0, lam=1.0)
