"""Per-token KL estimators, straight-through variants, and the reward and loss uses of KL."""

import math

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import (
    KL_ESTIMATOR_NAMES,
    apply_kl_penalty,
    apply_kl_penalty_to_scores,
    compute_kl,
    compute_kl_loss,
    place_scores_on_last_token,
)

# x = logprobs - ref_logprobs = [0.5, -1.0]
LOGPROBS = torch.tensor([[-1.0, -2.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0]])


def test_kl_estimators_match_hand_worked_values():
    # k1 = x = [0.5, -1]
    # k2 = x^2 / 2 = [0.125, 0.5]
    # k3 = r - log r - 1 with r = exp(-x):
    #   x =  0.5: 0.606531 + 0.5 - 1 = 0.106531
    #   x = -1.0: 2.718282 - 1 - 1   = 0.718282
    # abs = [0.5, 1]
    assert_close(compute_kl(LOGPROBS, REF_LOGPROBS, "k1"), torch.tensor([[0.5, -1.0]]))
    assert_close(compute_kl(LOGPROBS, REF_LOGPROBS, "k2"), torch.tensor([[0.125, 0.5]]))
    assert_close(compute_kl(LOGPROBS, REF_LOGPROBS, "k3"), torch.tensor([[0.106531, 0.718282]]))
    assert_close(compute_kl(LOGPROBS, REF_LOGPROBS, "abs"), torch.tensor([[0.5, 1.0]]))


def test_k3_is_unbiased_for_the_kl_of_two_categoricals():
    # Exact expectation over the policy's support, so no sampling noise:
    # E_{a ~ p}[k3(a)] = sum_a p_a (q_a / p_a - log(q_a / p_a) - 1) = KL(p || q) since sum q = 1.
    policy = torch.tensor([0.5, 0.3, 0.2])
    reference = torch.tensor([0.2, 0.2, 0.6])

    k3 = compute_kl(policy.log(), reference.log(), "k3")

    assert_close((policy * k3).sum(), (policy * (policy / reference).log()).sum())


def test_k3_stays_finite_and_clamped_for_extreme_log_ratios():
    logprobs = torch.tensor([[0.0, -500.0]], requires_grad=True)
    ref_logprobs = torch.tensor([[-500.0, 0.0]])

    k3 = compute_kl(logprobs, ref_logprobs, "k3")
    k3.sum().backward()

    # x = 500: log r clamped to -20 -> exp(-20) + 19 -> clamped to 10
    # x = -500: log r clamped to 20 -> exp(20) - 21  -> clamped to 10
    assert_close(k3, torch.tensor([[10.0, 10.0]]))
    assert torch.isfinite(logprobs.grad).all()


@pytest.mark.parametrize("name", ["k1+", "k3+", "abs+"])
def test_straight_through_estimator_has_its_value_and_the_gradient_of_k2(name):
    logprobs = LOGPROBS.clone().requires_grad_(True)

    straight_through = compute_kl(logprobs, REF_LOGPROBS, name)
    straight_through.sum().backward()

    assert_close(straight_through, compute_kl(LOGPROBS, REF_LOGPROBS, name.removesuffix("+")))
    # d k2 / d logprobs = x = [0.5, -1]
    assert_close(logprobs.grad, torch.tensor([[0.5, -1.0]]))


def test_plain_k1_gradient_differs_from_its_straight_through_variant():
    logprobs = LOGPROBS.clone().requires_grad_(True)

    compute_kl(logprobs, REF_LOGPROBS, "k1").sum().backward()

    assert_close(logprobs.grad, torch.ones(1, 2))


def test_k3_gradient_matches_its_derivative():
    # d/dx (exp(-x) + x - 1) = 1 - exp(-x) = [1 - 0.606531, 1 - 2.718282]
    logprobs = LOGPROBS.clone().requires_grad_(True)

    compute_kl(logprobs, REF_LOGPROBS, "k3").sum().backward()

    assert_close(logprobs.grad, torch.tensor([[1 - math.exp(-0.5), 1 - math.e]]))


def test_unknown_kl_estimator_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown KL estimator 'low_var'; choose one of 'k1', 'k2', 'k3'"):
        compute_kl(LOGPROBS, REF_LOGPROBS, "low_var")
    assert set(KL_ESTIMATOR_NAMES) == {"k1", "k2", "k3", "abs", "k1+", "k3+", "abs+"}


def test_scores_land_on_the_last_valid_token_even_after_observation_tokens():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])

    placed = place_scores_on_last_token(torch.tensor([1.0, 2.0, 3.0]), mask)

    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert_close(placed, expected)


def test_kl_penalty_is_subtracted_from_every_valid_token_reward():
    # kl_coef = 0.5
    # row 0: [-0.05, -0.10, 1 - 0.15]            per-token mean KL 0.2
    # row 1: [-0.20, 0.5 - 0.25, 0 (padding)]    per-token mean KL 0.45 (inf at padding ignored)
    # kl_mean = (0.2 + 0.45) / 2 = 0.325
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, float("inf")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    result = apply_kl_penalty(torch.tensor([1.0, 0.5]), kl, mask, kl_coef=0.5)

    assert_close(result.token_level_rewards, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, 0.25, 0.0]]))
    assert_close(result.kl_mean, torch.tensor(0.325))


def test_kl_penalty_per_response_is_the_sum_of_its_token_rewards():
    # the rows above: 1 - 0.5 * 0.6 = 0.7 and 0.5 - 0.5 * 0.9 = 0.05 (inf at padding ignored)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, float("inf")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])

    scores = apply_kl_penalty_to_scores(torch.tensor([1.0, 0.5]), kl, mask, kl_coef=0.5)

    assert_close(scores, torch.tensor([0.7, 0.05]))
    assert_close(scores, apply_kl_penalty(torch.tensor([1.0, 0.5]), kl, mask, kl_coef=0.5).token_level_rewards.sum(-1))


def test_kl_loss_is_the_coefficient_times_the_aggregated_kl():
    # token-mean of k3 over the 2 valid tokens: (0.106531 + 0.718282) / 2 = 0.412406; times 0.1
    logprobs = LOGPROBS.clone().requires_grad_(True)
    kl = compute_kl(logprobs, REF_LOGPROBS, "k3")

    result = compute_kl_loss(kl, torch.ones(1, 2), kl_coef=0.1)
    result.loss.backward()

    assert_close(result.loss, torch.tensor(0.0412406))
    assert_close(result.kl_mean, torch.tensor(0.412406))
    assert not result.kl_mean.requires_grad
    # 0.1 * (1 - exp(-x)) / 2
    assert_close(logprobs.grad, 0.05 * torch.tensor([[1 - math.exp(-0.5), 1 - math.e]]))


def test_negative_kl_coef_is_rejected():
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        compute_kl_loss(torch.zeros(1, 2), torch.ones(1, 2), kl_coef=-0.1)


def test_kl_loss_uses_the_requested_aggregation_mode():
    # KL [[1, 2, 3], [4, pad]]: token-mean 10 / 4 = 2.5; seq-mean-token-mean (2 + 4) / 2 = 3
    kl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])

    token_mean = compute_kl_loss(kl, mask, kl_coef=0.5, loss_agg_mode="token-mean")
    seq_mean = compute_kl_loss(kl, mask, kl_coef=0.5, loss_agg_mode="seq-mean-token-mean")

    assert_close(token_mean.kl_mean, torch.tensor(2.5))
    assert_close(seq_mean.kl_mean, torch.tensor(3.0))
    assert_close(seq_mean.loss, torch.tensor(1.5))
