"""CISPO: a truncated, stop-gradient importance weight on every token's log-prob gradient."""

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import (
    CISPOPolicyLossConfig,
    PolicyLossConfig,
    compute_policy_loss,
    cispo_policy_loss,
    ppo_policy_loss,
)
from roles.trainer import TrainerConfig

# Four tokens of one response, eps_high = 0.2 and no lower bound (weight = min(rho, 1.2)):
#   t  rho  A   log pi  weight  L = -weight * A * log pi   d L / d log pi = -weight * A / 4
#   0  1.5   1  -1.0    1.2      1.2    (truncated)        -0.3
#   1  0.5   1  -2.0    0.5      1.0                        -0.125
#   2  1.1  -1  -0.5    1.1     -0.55                       0.275
#   3  4.0  -2  -3.0    1.2     -7.2    (truncated)         0.6
RATIOS = torch.tensor([[1.5, 0.5, 1.1, 4.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
OLD_LOGPROBS = LOGPROBS - RATIOS.log()
MASK = torch.ones(1, 4)


def new_logprobs():
    return LOGPROBS.clone().requires_grad_(True)


def test_cispo_loss_is_minus_the_truncated_weight_times_advantage_times_logprob():
    # token-mean: (1.2 + 1.0 - 0.55 - 7.2) / 4 = -1.3875; tokens 0 and 3 truncated
    result = cispo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=0.2)

    assert_close(result.loss, torch.tensor(-1.3875))
    assert_close(result.clip_fraction, torch.tensor(0.5))
    assert_close(result.lower_clip_fraction, torch.tensor(0.0))


def test_every_token_keeps_a_gradient_where_ppo_cuts_the_clipped_ones():
    # PPO with the clip range [0.8, 1.2] cuts token 0 (rho 1.5, A > 0); CISPO keeps it
    # with its weight truncated to 1.2.
    logprobs, ppo_logprobs = new_logprobs(), new_logprobs()

    (gradient,) = torch.autograd.grad(
        cispo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=0.2).loss, logprobs
    )
    (ppo_gradient,) = torch.autograd.grad(
        ppo_policy_loss(ppo_logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=0.2).loss, ppo_logprobs
    )

    assert_close(gradient, torch.tensor([[-0.3, -0.125, 0.275, 0.6]]))
    assert ppo_gradient[0, 0] == 0.0


def test_no_lower_bound_by_default_and_verls_two_sided_clip_when_asked():
    # clip_ratio_low 0.2 raises token 1's weight from 0.5 to 0.8: its loss becomes 1.6 and
    # its gradient -0.8 / 4; loss (1.2 + 1.6 - 0.55 - 7.2) / 4 = -1.2375; 3 of 4 truncated.
    logprobs = new_logprobs()

    result = cispo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_low=0.2, clip_ratio_high=0.2)
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert CISPOPolicyLossConfig().clip_ratio_low is None
    assert_close(result.loss, torch.tensor(-1.2375))
    assert_close(result.clip_fraction, torch.tensor(0.75))
    assert_close(gradient, torch.tensor([[-0.3, -0.2, 0.275, 0.6]]))


def test_on_policy_cispo_has_ppos_gradient_but_not_its_loss_value():
    # rho = 1: both gradients are -A / 4; PPO's loss is mean(-A) = 0.25, CISPO's is
    # mean(-A * log pi) = (1 + 2 - 0.5 - 6) / 4 = -0.875.
    logprobs, ppo_logprobs = new_logprobs(), new_logprobs()

    cispo = cispo_policy_loss(logprobs, LOGPROBS, ADVANTAGES, MASK)
    ppo = ppo_policy_loss(ppo_logprobs, LOGPROBS, ADVANTAGES, MASK)

    assert_close(torch.autograd.grad(cispo.loss, logprobs)[0], torch.autograd.grad(ppo.loss, ppo_logprobs)[0])
    assert_close(cispo.loss, torch.tensor(-0.875))
    assert_close(ppo.loss, torch.tensor(0.25))


def test_cispo_reports_the_token_level_kl_estimates_ppo_reports():
    cispo = cispo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK)
    ppo = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK)

    assert_close(cispo.ppo_kl, ppo.ppo_kl)
    assert_close(cispo.approx_kl, ppo.approx_kl)


def test_a_one_token_response():
    # rho = 2, A = 1, log pi = -0.7, default eps_high 0.28: weight 1.28,
    # loss 1.28 * 0.7 = 0.896, gradient -1.28
    logprobs = torch.tensor([[-0.7]], requires_grad=True)

    result = cispo_policy_loss(logprobs, torch.tensor([[-0.7 - 0.693147]]), torch.ones(1, 1), torch.ones(1, 1))
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(0.896))
    assert_close(gradient, torch.tensor([[-1.28]]))
    assert_close(result.clip_fraction, torch.tensor(1.0))


def test_importance_weights_scale_each_token_loss_and_gradient():
    # weights [1, 0.5, 2, 0]: (1.2 + 0.5 - 1.1 + 0) / 4 = 0.15; gradient [-0.3, -0.0625, 0.55, 0]
    weights = torch.tensor([[1.0, 0.5, 2.0, 0.0]], requires_grad=True)
    logprobs = new_logprobs()

    result = cispo_policy_loss(
        logprobs, OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=0.2, importance_weights=weights
    )
    gradient, weights_gradient = torch.autograd.grad(result.loss, (logprobs, weights), allow_unused=True)

    assert_close(result.loss, torch.tensor(0.15))
    assert_close(gradient, torch.tensor([[-0.3, -0.0625, 0.55, 0.0]]))
    assert weights_gradient is None  # the weights are constants


def test_an_all_masked_batch_gives_zero_loss_zero_gradient_and_zero_metrics():
    logprobs = new_logprobs()

    result = cispo_policy_loss(logprobs, OLD_LOGPROBS, ADVANTAGES, torch.zeros(1, 4))
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(0.0))
    assert_close(gradient, torch.zeros(1, 4))
    for metric in (result.clip_fraction, result.approx_kl, result.ppo_kl):
        assert_close(metric, torch.tensor(0.0))


def test_minus_inf_logprobs_at_padding_leave_loss_and_gradient_finite():
    # token 1 is padding with -inf log-probs (-inf - -inf = NaN); only token 0 counts:
    # rho 1, A 1, log pi -1 -> loss 1, gradient -1
    logprobs = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old_logprobs = torch.tensor([[-1.0, float("-inf")]])

    result = cispo_policy_loss(logprobs, old_logprobs, torch.ones(1, 2), torch.tensor([[1, 0]]))
    (gradient,) = torch.autograd.grad(result.loss, logprobs)

    assert_close(result.loss, torch.tensor(1.0))
    assert_close(gradient, torch.tensor([[-1.0, 0.0]]))
    assert_close(result.clip_fraction, torch.tensor(0.0))


def test_a_negative_upper_clip_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="clip_ratio_high must be >= 0, got -0.1"):
        cispo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=-0.1)


def test_trainer_config_takes_policy_loss_type_cispo():
    config = TrainerConfig.model_validate({"model": "m", "policy_loss": {"type": "cispo", "clip_ratio_high": 3.0}})

    assert config.policy_loss == CISPOPolicyLossConfig(clip_ratio_high=3.0)
    assert config.policy_loss.loss_agg_mode == "token-mean"


def test_compute_policy_loss_runs_cispo_and_ppo_with_their_config_parameters():
    cispo_config = CISPOPolicyLossConfig(clip_ratio_high=0.2)
    cispo = compute_policy_loss(cispo_config, new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK)
    ppo_config = PolicyLossConfig(clip_ratio_high=0.3, dual_clip_c=3.0)
    ppo = compute_policy_loss(ppo_config, new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK)
    expected_ppo = ppo_policy_loss(new_logprobs(), OLD_LOGPROBS, ADVANTAGES, MASK, clip_ratio_high=0.3, dual_clip_c=3.0)

    assert_close(cispo.loss, torch.tensor(-1.3875))
    assert_close(ppo.loss, expected_ppo.loss)
