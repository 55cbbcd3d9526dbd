"""GSPO: the PPO clip applied to one importance ratio per response (Zheng et al., 2025).

"Group Sequence Policy Optimization" (arXiv:2507.18071) replaces PPO's token ratio by
the response's length-normalised likelihood ratio, the geometric mean of its token
ratios:

    s_i = (pi(y_i | x) / pi_old(y_i | x)) ^ (1 / |y_i|)
        = exp( (1 / |y_i|) sum_t (log pi_{i,t} - log pi_old_{i,t}) )

and clips it as PPO clips a token's: L_i = max(-A_i * s_i, -A_i * clip(s_i, 1 - eps_low,
1 + eps_high)). Every token of a response then shares one ratio and one clipping
decision, so one token whose probability moved a lot (an MoE routing change, a
numerical mismatch) no longer decides alone whether its neighbours train.

The gradient is taken through the paper's token form (GSPO-token),

    s_{i,t} = sg[s_i] * pi_{i,t} / sg[pi_{i,t}]

whose value is s_i at every token and whose gradient is s_i * grad log pi_{i,t}: with
a per-token advantage A_{i,t} it is GSPO-token, and with an advantage constant over the
response (GRPO's, RLOO's) it equals GSPO's own gradient,
s_i * A_i * (1 / |y_i|) sum_t grad log pi_{i,t}, once the token losses are averaged
within the response. That is why the default aggregation is `seq-mean-token-mean`
(the paper's objective: responses weigh the same, tokens within one by 1 / |y_i|).
Unlike verl, which always aggregates GSPO by `seq-mean-token-mean`, the configured
`loss_agg_mode` is honoured: the trainer weighs micro-batches, the entropy bonus and
the KL loss by that same mode, so ignoring it would make them disagree.

The paper's clip ranges are far narrower than PPO's (3e-4 and 4e-4): s_i is a mean of
log-ratios, so it moves much less than a single token's ratio. Importance weights
(asynchronous training) multiply each token's loss, as in `ppo_policy_loss`. A
response with no valid token gets s_i = 1 and contributes nothing; an all-masked batch
gives a loss of 0 with zero gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from roles.algorithms.aggregation import LossAggMode, aggregate_loss
from roles.algorithms.masked import as_float_mask, masked_mean, require_rank, require_same_shape
from roles.algorithms.policy_loss import (
    POLICY_LOG_RATIO_CLAMP,
    LossAggregationConfig,
    PolicyLossOutput,
    check_clip_arguments,
    policy_loss_output,
)

#: The GSPO paper's clip range: s_i is clipped to [1 - 3e-4, 1 + 4e-4].
GSPO_CLIP_RATIO_LOW = 3e-4
GSPO_CLIP_RATIO_HIGH = 4e-4


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log s_i: the mean over a response's valid tokens of log pi - log pi_old, detached.

    Each token's log-ratio is clamped to +-POLICY_LOG_RATIO_CLAMP first, as in PPO, so
    s_i stays finite; a response with no valid token gets 0 (s_i = 1).

    Args:
        logprobs: [B, T] log-probs under the policy being trained.
        old_logprobs: [B, T] the same under the policy before this update.
        response_mask: [B, T] 0/1 (float or bool).

    Returns:
        [B] log s_i.
    """
    with torch.no_grad():
        log_ratio = (logprobs - old_logprobs).clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
        return masked_mean(log_ratio, response_mask, dim=-1)


def gspo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = GSPO_CLIP_RATIO_LOW,
    clip_ratio_high: float = GSPO_CLIP_RATIO_HIGH,
    importance_weights: torch.Tensor | None = None,
    loss_agg_mode: LossAggMode = "seq-mean-token-mean",
    loss_scale_factor: float | None = None,
) -> PolicyLossOutput:
    """GSPO's clipped loss on sequence ratios; see the module docstring for the formula.

    Per valid token: L_{i,t} = w_{i,t} * max(-A_{i,t} * s_{i,t}, -A_{i,t} * clip(s_{i,t},
    1 - eps_low, 1 + eps_high)), s_{i,t} = sg[s_i] * pi_{i,t} / sg[pi_{i,t}] (value s_i).

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the policy being
            trained (carrying the gradient).
        old_logprobs: [B, T] the same under the policy before this update.
        advantages: [B, T] per-token advantages (constant over a response for GSPO
            proper, e.g. GRPO's).
        response_mask: [B, T] 0/1 (float or bool).
        clip_ratio_low: eps_low, s_i is clipped from below at 1 - eps_low.
        clip_ratio_high: eps_high, s_i is clipped from above at 1 + eps_high.
        importance_weights: optional [B, T] per-token weights multiplied into the
            loss (treated as constants).
        loss_agg_mode: see `aggregation`; the paper's objective is the default.
        loss_scale_factor: see `aggregation.aggregate_loss`.

    Returns:
        PolicyLossOutput: clip_fraction is the share of valid tokens whose response's
        ratio was clipped (each response counted by its tokens); lower_clip_fraction
        is 0; approx_kl and ppo_kl are the token-level estimates PPO reports.
    """
    require_rank(logprobs, 2, "logprobs", "[B, T]")
    require_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=response_mask
    )
    check_clip_arguments(clip_ratio_low, clip_ratio_high)
    advantages = advantages.detach()
    is_valid = as_float_mask(response_mask, logprobs) > 0

    log_s = sequence_log_ratio(logprobs, old_logprobs, response_mask)
    # log pi - sg[log pi] is 0 in value and carries grad log pi; torch.where, not a product,
    # so a -inf log-prob at a padding position gives neither a NaN value nor a NaN gradient.
    token_term = torch.where(is_valid, logprobs - logprobs.detach(), torch.zeros_like(logprobs))
    ratio = (log_s.unsqueeze(-1) + token_term).exp()
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_token_loss = torch.maximum(unclipped_loss, clipped_loss)
    is_clipped = clipped_loss > unclipped_loss

    if importance_weights is not None:
        require_same_shape(importance_weights=importance_weights, logprobs=logprobs)
        per_token_loss = per_token_loss * importance_weights.detach()

    loss = aggregate_loss(per_token_loss, response_mask, loss_agg_mode, loss_scale_factor)
    log_ratio = (logprobs - old_logprobs).clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
    return policy_loss_output(loss, log_ratio, response_mask, is_clipped)


class GSPOPolicyLossConfig(LossAggregationConfig):
    """GSPO's loss (`gspo_policy_loss`): the PPO clip on one ratio per response."""

    type: Literal["gspo"] = "gspo"
    """Selects GSPO (Zheng et al., 2025, arXiv:2507.18071)."""
    clip_ratio_low: float = Field(GSPO_CLIP_RATIO_LOW, ge=0.0, lt=1.0)
    """eps_low: the sequence ratio s_i is clipped from below at 1 - clip_ratio_low (the
    paper's 3e-4)."""
    clip_ratio_high: float = Field(GSPO_CLIP_RATIO_HIGH, ge=0.0)
    """eps_high: s_i is clipped from above at 1 + clip_ratio_high (the paper's 4e-4)."""
    loss_agg_mode: LossAggMode = "seq-mean-token-mean"
    """How per-token losses become one scalar; seq-mean-token-mean is the paper's
    objective (and what verl always uses for GSPO); the other modes of `aggregation`
    are honoured, e.g. token-mean weighs long responses more."""
