"""PPO clipped policy loss: asymmetric clip, dual clip, importance weights, diagnostics."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from roles.algorithms import PolicyLossConfig, compute_policy_loss, ppo_policy_loss
from roles.trainer import TrainerConfig

# Five tokens of one response, eps_low = 0.2, eps_high = 0.3 (clip range [0.8, 1.3]):
#   t  ratio  A    -A*ratio  -A*clip(ratio)  max           dual bound -3A (A < 0)
#   0  1.5    1    -1.5      -1.3            -1.3 clipped
#   1  0.5    1    -0.5      -0.8            -0.5
#   2  1.1   -1     1.1       1.1             1.1          3
#   3  0.7   -1     0.7       0.8             0.8 clipped  3
#   4  4.0   -2     8.0       2.6             8.0          6 -> 6 with dual clip
RATIOS = torch.tensor([[1.5, 0.5, 1.1, 0.7, 4.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -1.0, -2.0]])
OLD_LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -2.5]])
MASK = torch.ones(1, 5)


def new_logprobs():
    return (OLD_LOGPROBS + RATIOS.log()).requires_grad_(True)


def test_policy_loss_matches_hand_worked_example():
    # token-mean: (-1.3 - 0.5 + 1.1 + 0.8 + 8.0) / 5 = 1.62; tokens 0 and 3 clipped -> 0.4
    # approx_kl = mean(ratio - 1 - log ratio)
    #           = (0.094535 + 0.193147 + 0.004690 + 0.056675 + 1.613706) / 5 = 0.392550
    result = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3)

    assert_close(result.loss, torch.tensor(1.62))
    assert_close(result.clip_fraction, torch.tensor(0.4))
    assert_close(result.lower_clip_fraction, torch.tensor(0.0))
    assert_close(result.approx_kl, torch.tensor(0.392550))


def test_ppo_kl_is_verls_mean_of_old_minus_new_logprobs_not_approx_kl():
    # ppo_kl = mean(old - new) = mean(-log ratio)
    #        = (-0.405465 + 0.693147 - 0.095310 + 0.356675 - 1.386294) / 5 = -0.167449
    # (negative here, where approx_kl, a k3 estimate, is 0.392550)
    result = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3)

    assert_close(result.ppo_kl, torch.tensor(-0.167449))


def test_ppo_kl_averages_valid_tokens_only():
    # Token 1 is padding: mean(-log ratio) over tokens 0, 2, 3, 4 = (-0.405465 - 0.095310 + 0.356675 - 1.386294) / 4
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]])

    result = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, mask)

    assert_close(result.ppo_kl, torch.tensor(-1.530394 / 4))


def test_dual_clip_bounds_negative_advantage_loss_by_c_times_abs_advantage():
    # token 4: min(8.0, 3 * 2) = 6 -> (-1.3 - 0.5 + 1.1 + 0.8 + 6.0) / 5 = 1.22
    result = ppo_policy_loss(
        new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3, dual_clip_c=3.0
    )

    assert_close(result.loss, torch.tensor(1.22))
    assert_close(result.lower_clip_fraction, torch.tensor(0.2))


def test_clipped_tokens_get_no_gradient():
    # d loss / d logprob_t = -A_t * ratio_t / 5 where unclipped, else 0:
    # [0, -0.5/5, 1.1/5, 0, 8/5]; with dual clip token 4 is constant too.
    logprobs = new_logprobs()
    ppo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3).loss.backward()
    dual_logprobs = new_logprobs()
    ppo_policy_loss(
        dual_logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3, dual_clip_c=3.0
    ).loss.backward()

    assert_close(logprobs.grad, torch.tensor([[0.0, -0.1, 0.22, 0.0, 1.6]]))
    assert_close(dual_logprobs.grad, torch.tensor([[0.0, -0.1, 0.22, 0.0, 0.0]]))


def test_importance_weights_scale_each_token_loss():
    # weights [1, 0.5, 2, 1, 0]: (-1.3 - 0.25 + 2.2 + 0.8 + 0) / 5 = 0.29
    weights = torch.tensor([[1.0, 0.5, 2.0, 1.0, 0.0]])

    result = ppo_policy_loss(
        new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3,
        importance_weights=weights,
    )

    assert_close(result.loss, torch.tensor(0.29))


def test_importance_weights_are_constants_that_scale_the_gradient():
    # d loss / d logprob_t = w_t * (-A_t * ratio_t) / 5 where unclipped:
    # weights [1, 0.5, 2, 1, 0] -> [0, -0.05, 0.44, 0, 0]
    logprobs = new_logprobs()
    weights = torch.tensor([[1.0, 0.5, 2.0, 1.0, 0.0]], requires_grad=True)

    ppo_policy_loss(
        logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.3,
        importance_weights=weights,
    ).loss.backward()

    assert_close(logprobs.grad, torch.tensor([[0.0, -0.05, 0.44, 0.0, 0.0]]))
    assert weights.grad is None


def test_on_policy_loss_is_minus_mean_advantage_with_no_clipping():
    logprobs = OLD_LOGPROBS.clone().requires_grad_(True)

    result = ppo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK)

    assert_close(result.loss, -ADVANTAGES.mean())
    assert_close(result.clip_fraction, torch.tensor(0.0))
    assert_close(result.approx_kl, torch.tensor(0.0))


def test_padding_values_do_not_change_the_loss():
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    garbage_old = OLD_LOGPROBS.clone()
    garbage_old[0, 3:] = torch.tensor([-1e6, 1e6])

    clean = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, mask, clip_ratio_high=0.3)
    noisy = ppo_policy_loss(new_logprobs(), garbage_old, ADVANTAGES, mask, clip_ratio_high=0.3)

    # (-1.3 - 0.5 + 1.1) / 3
    assert_close(clean.loss, torch.tensor(-0.7 / 3))
    assert_close(noisy.loss, clean.loss)
    assert_close(noisy.clip_fraction, torch.tensor(1 / 3))


def test_extreme_log_ratio_is_clamped_to_a_finite_loss():
    logprobs = torch.tensor([[0.0]], requires_grad=True)

    result = ppo_policy_loss(logprobs, torch.tensor([[-1000.0]]), torch.tensor([[-1.0]]), torch.ones(1, 1))
    result.loss.backward()

    assert_close(result.loss, torch.tensor(math.exp(20.0)))
    assert torch.isfinite(logprobs.grad).all()


def test_loss_aggregation_mode_is_applied():
    # two responses of lengths 2 and 1, every ratio 1, so loss per token = -A
    advantages = torch.tensor([[1.0, 3.0], [-1.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    logprobs = torch.zeros(2, 2)

    token_mean = ppo_policy_loss(logprobs, logprobs, advantages, mask, loss_agg_mode="token-mean")
    seq_mean = ppo_policy_loss(logprobs, logprobs, advantages, mask, loss_agg_mode="seq-mean-token-mean")

    assert_close(token_mean.loss, torch.tensor(-1.0))  # (-1 - 3 + 1) / 3
    assert_close(seq_mean.loss, torch.tensor(-0.5))  # (-2 + 1) / 2


def test_dual_clip_constant_not_above_one_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="dual_clip_c must be > 1, got 1.0; use e.g. 3.0, or None"):
        ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, dual_clip_c=1.0)


def test_policy_loss_config_validates_and_applies_as_keyword_arguments():
    with pytest.raises(ValidationError, match="dual_clip_c must be > 1"):
        PolicyLossConfig(dual_clip_c=0.5)
    config = PolicyLossConfig(clip_ratio_high=0.3, dual_clip_c=3.0)

    result = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, **config.model_dump(exclude={"type"}))

    assert_close(result.loss, torch.tensor(1.22))


def test_minus_inf_logprobs_at_padding_leave_loss_and_diagnostics_finite():
    # -inf - (-inf) = NaN at the padded token; only token 0 (ratio 1, A = 1) counts.
    logprobs = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old_logprobs = torch.tensor([[-1.0, float("-inf")]])

    result = ppo_policy_loss(logprobs, old_logprobs, torch.tensor([[1.0, 1.0]]), torch.tensor([[1, 0]]))
    result.loss.backward()

    assert_close(result.loss, torch.tensor(-1.0))
    assert_close(result.approx_kl, torch.tensor(0.0))
    assert_close(result.clip_fraction, torch.tensor(0.0))
    assert_close(logprobs.grad, torch.tensor([[-1.0, 0.0]]))


def test_a_policy_loss_without_type_is_still_ppo():
    config = TrainerConfig.model_validate({"model": "m", "policy_loss": {"clip_ratio_high": 0.28, "dual_clip_c": 3.0}})

    assert config.policy_loss == PolicyLossConfig(clip_ratio_high=0.28, dual_clip_c=3.0)
    assert config.policy_loss.type == "ppo"
    assert TrainerConfig.model_validate({"model": "m"}).policy_loss == PolicyLossConfig()


def test_an_unknown_policy_loss_type_names_the_choices():
    with pytest.raises(ValidationError, match="policy_loss.type must be one of ppo, gspo, cispo"):
        TrainerConfig.model_validate({"model": "m", "policy_loss": {"type": "grpo"}})


def test_the_default_config_through_compute_policy_loss_is_the_ppo_loss_unchanged():
    # the hand-worked example with the defaults (clip 0.2 both sides, token-mean):
    # token 0 -1.2 (clipped), 1 -0.5, 2 1.1, 3 0.8 (clipped), 4 8.0 -> 8.2 / 5 = 1.64
    logprobs = new_logprobs()

    result = compute_policy_loss(PolicyLossConfig(), logprobs, OLD_LOGPROBS, ADVANTAGES, MASK)
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(1.64))
    assert_close(result.clip_fraction, torch.tensor(0.4))
    assert_close(gradient, torch.tensor([[0.0, -0.1, 0.22, 0.0, 1.6]]))
