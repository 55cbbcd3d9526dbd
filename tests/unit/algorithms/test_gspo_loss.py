"""GSPO: one clipped ratio per response (the geometric mean of its token ratios)."""

import math

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import (
    GSPOPolicyLossConfig,
    PolicyLossConfig,
    compute_policy_loss,
    gspo_policy_loss,
    ppo_policy_loss,
)
from roles.trainer import TrainerConfig

# Three responses, clip range [1 - 0.2, 1 + 0.05] = [0.8, 1.05]:
#   i  valid  log rho per token   log s_i  s_i       A_i  -A*s      -A*clip(s)  loss per token
#   0  3      0.3, -0.1, 0.1      0.1      1.105171   1   -1.105171  -1.05       -1.05     clipped (above)
#   1  2      -0.2, 0.0           -0.1     0.904837   2   -1.809675  -1.809675   -1.809675
#   2  1      -0.5                -0.5     0.606531  -1    0.606531   0.8         0.8      clipped (below)
LOG_RATIOS = torch.tensor([[0.3, -0.1, 0.1], [-0.2, 0.0, 0.0], [-0.5, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]]) * MASK
OLD_LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.0], [-0.7, -1.0, -1.0]])
CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.05}


def new_logprobs():
    return (OLD_LOGPROBS + LOG_RATIOS).requires_grad_(True)


def test_gspo_clips_each_response_by_the_geometric_mean_of_its_token_ratios():
    # seq-mean-token-mean: (-1.05 - 1.809675 + 0.8) / 3 = -0.686558
    # clipped tokens: all 3 of response 0 and the 1 of response 2 -> 4 / 6
    result = gspo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, **CLIP)

    assert_close(result.loss, torch.tensor(-0.686558))
    assert_close(result.clip_fraction, torch.tensor(4 / 6))
    assert_close(result.lower_clip_fraction, torch.tensor(0.0))


def test_gspo_reports_the_token_level_kl_estimates_ppo_reports():
    # ppo_kl = mean(-log rho) over the 6 valid tokens = 0.4 / 6
    # approx_kl = mean(rho - 1 - log rho) = (0.049859 + 0.004837 + 0.005171 + 0.018731 + 0 + 0.106531) / 6
    result = gspo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, **CLIP)
    ppo = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, **CLIP)

    assert_close(result.ppo_kl, torch.tensor(0.4 / 6))
    assert_close(result.approx_kl, torch.tensor(0.185129 / 6))
    assert_close(result.ppo_kl, ppo.ppo_kl)
    assert_close(result.approx_kl, ppo.approx_kl)


def test_gspo_gradient_is_the_sequence_ratio_times_each_token_logprob_gradient():
    # unclipped response 1: d loss / d log pi_t = -A * s / (|y_1| * 3 responses) = -2 * 0.904837 / 6;
    # the clipped responses 0 and 2 and the padding get none.
    logprobs = new_logprobs()

    (gradient,) = torch.autograd.grad(gspo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, **CLIP).loss, logprobs)

    assert_close(gradient, torch.tensor([[0.0, 0.0, 0.0], [-0.301612, -0.301612, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_with_token_advantages_weighs_each_token_gradient_by_its_own_advantage():
    # GSPO-token: s = 1 (on policy), one response of two tokens, A = [1, 3]:
    # loss = mean(-A * s) = -2; d loss / d log pi_t = -A_t * s / 2 = [-0.5, -1.5]
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)

    result = gspo_policy_loss(logprobs, logprobs.detach(), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(-2.0))
    assert_close(gradient, torch.tensor([[-0.5, -1.5]]))


def test_one_outlier_token_does_not_clip_its_response_where_ppo_clips_that_token():
    # log rho = [0.3, -0.1, -0.1]: token 0's ratio 1.35 leaves [0.8, 1.05], but
    # log s = 0.1 / 3, s = 1.033895 stays inside, so every token keeps its gradient
    # -A * s / 3 = -0.344632 under GSPO; PPO cuts token 0's.
    log_ratios = torch.tensor([[0.3, -0.1, -0.1]])
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    gspo_logprobs = (old + log_ratios).requires_grad_(True)
    ppo_logprobs = (old + log_ratios).requires_grad_(True)
    advantages, mask = torch.ones(1, 3), torch.ones(1, 3)

    gspo = gspo_policy_loss(gspo_logprobs, old, advantages, mask, **CLIP)
    ppo = ppo_policy_loss(ppo_logprobs, old, advantages, mask, **CLIP)
    (gspo_gradient,) = torch.autograd.grad(gspo.loss, gspo_logprobs)
    (ppo_gradient,) = torch.autograd.grad(ppo.loss, ppo_logprobs)

    assert_close(gspo.clip_fraction, torch.tensor(0.0))
    assert_close(gspo_gradient, torch.full((1, 3), -math.exp(0.1 / 3) / 3))
    assert_close(ppo.clip_fraction, torch.tensor(1 / 3))
    assert ppo_gradient[0, 0] == 0.0


def test_gspo_honours_the_configured_aggregation_mode():
    # token-mean: (3 * -1.05 + 2 * -1.809675 + 0.8) / 6 = -0.994892
    result = gspo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, loss_agg_mode="token-mean", **CLIP)

    assert_close(result.loss, torch.tensor(-0.994892))


def test_gspo_on_a_one_token_response_is_ppo():
    # s_i of one token is that token's ratio, so the loss and gradient are PPO's.
    old = torch.tensor([[-1.0], [-2.0], [-0.3]])
    advantages = torch.tensor([[1.0], [-1.0], [0.5]])
    mask = torch.ones(3, 1)
    gspo_logprobs = (old + torch.tensor([[0.4], [-0.6], [0.01]])).requires_grad_(True)
    ppo_logprobs = gspo_logprobs.detach().clone().requires_grad_(True)

    gspo = gspo_policy_loss(gspo_logprobs, old, advantages, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    ppo = ppo_policy_loss(ppo_logprobs, old, advantages, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)

    assert_close(gspo.loss, ppo.loss)
    assert_close(gspo.clip_fraction, ppo.clip_fraction)
    assert_close(torch.autograd.grad(gspo.loss, gspo_logprobs)[0], torch.autograd.grad(ppo.loss, ppo_logprobs)[0])


def test_importance_weights_scale_each_token_loss_and_gradient():
    # weights per token: response 0 [1, 0.5, 2], response 1 [2, 1], response 2 [3]:
    # ((-1.05 * 3.5) / 3 + (-1.809675 * 3) / 2 + 0.8 * 3) / 3 = -0.513171
    weights = torch.tensor([[1.0, 0.5, 2.0], [2.0, 1.0, 0.0], [3.0, 0.0, 0.0]], requires_grad=True)
    logprobs = new_logprobs()

    result = gspo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, importance_weights=weights, **CLIP)
    gradient, weights_gradient = torch.autograd.grad(result.loss, (logprobs, weights), allow_unused=True)

    assert_close(result.loss, torch.tensor(-0.513171))
    assert_close(gradient[1], torch.tensor([-0.603225, -0.301612, 0.0]))
    assert weights_gradient is None  # the weights are constants


def test_an_all_masked_batch_gives_zero_loss_zero_gradient_and_zero_metrics():
    logprobs = new_logprobs()

    result = gspo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, torch.zeros(3, 3), **CLIP)
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(0.0))
    assert_close(gradient, torch.zeros(3, 3))
    for metric in (result.clip_fraction, result.approx_kl, result.ppo_kl):
        assert_close(metric, torch.tensor(0.0))


def test_padding_values_change_neither_the_loss_nor_the_gradient():
    # -inf - (-inf) = NaN at the padding of responses 1 and 2; garbage old log-probs too.
    logprobs = new_logprobs().detach()
    logprobs[MASK == 0] = float("-inf")
    garbage_old = OLD_LOGPROBS.clone()
    garbage_old[MASK == 0] = torch.tensor([float("-inf"), 1e6, -1e6])
    logprobs.requires_grad_(True)

    result = gspo_policy_loss(logprobs, garbage_old, ADVANTAGES, MASK, **CLIP)
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(-0.686558))
    assert_close(result.ppo_kl, torch.tensor(0.4 / 6))
    assert_close(gradient, torch.tensor([[0.0, 0.0, 0.0], [-0.301612, -0.301612, 0.0], [0.0, 0.0, 0.0]]))


def test_a_lower_clip_of_one_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="clip_ratio_low must be in \\[0, 1\\), got 1.0"):
        gspo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=1.0)


def test_trainer_config_takes_policy_loss_type_gspo_with_the_paper_defaults():
    config = TrainerConfig.model_validate({"model": "m", "policy_loss": {"type": "gspo"}})

    assert config.policy_loss == GSPOPolicyLossConfig()
    assert (config.policy_loss.clip_ratio_low, config.policy_loss.clip_ratio_high) == (3e-4, 4e-4)
    assert config.policy_loss.loss_agg_mode == "seq-mean-token-mean"


def test_compute_policy_loss_runs_gspo_with_the_config_parameters():
    config = GSPOPolicyLossConfig(**CLIP)

    result = compute_policy_loss(config, new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK)

    assert_close(result.loss, torch.tensor(-0.686558))


def test_gspo_config_has_no_dual_clip():
    with pytest.raises(ValueError, match="dual_clip_c"):
        TrainerConfig.model_validate({"model": "m", "policy_loss": {"type": "gspo", "dual_clip_c": 3.0}})
    assert "dual_clip_c" in PolicyLossConfig.model_fields
