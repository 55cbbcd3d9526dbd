"""CISPO: clip the importance weight, not the update (MiniMax-M1, 2025).

MiniMax-M1 (arXiv:2506.13585) observed that PPO's clip drops the gradient of the tokens
whose ratio left the clip range after the first update, and those are often rare
tokens that matter ("However", "Wait"). CISPO keeps every token's gradient and bounds
only the weight it is multiplied by. Per valid token, with rho = pi / pi_old:

    rho_hat = clip(rho, 1 - eps_low, 1 + eps_high)
    L       = -sg[rho_hat] * A * log pi
    L       = w * L        if importance weights w are given (constants)

so grad L = -rho_hat * A * grad log pi. Where rho lies inside the clip range this is
PPO's gradient (-A * rho * grad log pi); outside it the token still trains, with its
weight truncated instead of its gradient cut.

Which side is bounded: the paper bounds the weight from above only ("we did not
impose a lower bound on the IS weight by setting eps_low to a large value; instead,
we only tuned eps_high"), so `clip_ratio_low` defaults to None (no lower bound:
rho_hat = min(rho, 1 + eps_high)). verl's `cispo` clips both sides with its actor's
`clip_ratio_low` / `clip_ratio_high`: set `clip_ratio_low` to match it. The paper does
not publish eps_high; the default 0.28 is DAPO's clip-higher, which Trinity-RFT's CISPO
also uses (Tinker's caps the weight at 4, `clip_ratio_high: 3.0`).

The loss value is on another scale than PPO's: PPO's token loss is -A * rho (about
-A), CISPO's is -rho_hat * A * log pi, which grows with the token's surprisal
-log pi. Its gradient is what matters; `train/loss` of a CISPO run cannot be compared
with a PPO run's. The aggregation default is token-mean, the paper's
1 / sum_i |o_i| normaliser.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from roles.algorithms.aggregation import LossAggMode, aggregate_loss
from roles.algorithms.masked import as_float_mask, require_rank, require_same_shape
from roles.algorithms.policy_loss import (
    POLICY_LOG_RATIO_CLAMP,
    LossAggregationConfig,
    PolicyLossOutput,
    check_clip_arguments,
    policy_loss_output,
)

#: CISPO's default eps_high (the paper tunes it without publishing it; DAPO's clip-higher).
CISPO_CLIP_RATIO_HIGH = 0.28


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float = CISPO_CLIP_RATIO_HIGH,
    importance_weights: torch.Tensor | None = None,
    loss_agg_mode: LossAggMode = "token-mean",
    loss_scale_factor: float | None = None,
) -> PolicyLossOutput:
    """CISPO's loss, -sg[clip(rho)] * A * log pi per token; see the module docstring.

    The loss value is not on PPO's scale (it carries log pi, not rho); its gradient
    equals PPO's for every token whose ratio lies inside the clip range, and keeps the
    others with a truncated weight.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the policy being
            trained (carrying the gradient).
        old_logprobs: [B, T] the same under the policy before this update.
        advantages: [B, T] per-token advantages.
        response_mask: [B, T] 0/1 (float or bool).
        clip_ratio_low: eps_low, the weight is clipped from below at 1 - eps_low;
            None (the paper's practice) leaves it unbounded below.
        clip_ratio_high: eps_high, the weight is clipped from above at 1 + eps_high.
        importance_weights: optional [B, T] per-token weights multiplied into the
            loss (treated as constants).
        loss_agg_mode: see `aggregation`.
        loss_scale_factor: see `aggregation.aggregate_loss`.

    Returns:
        PolicyLossOutput: clip_fraction is the share of valid tokens whose weight was
        truncated (on either bounded side); lower_clip_fraction is 0; approx_kl and
        ppo_kl are the token-level estimates PPO reports.
    """
    require_rank(logprobs, 2, "logprobs", "[B, T]")
    require_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=response_mask
    )
    check_clip_arguments(0.0 if clip_ratio_low is None else clip_ratio_low, clip_ratio_high)
    advantages = advantages.detach()
    is_valid = as_float_mask(response_mask, logprobs) > 0

    log_ratio = (logprobs - old_logprobs).clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
    with torch.no_grad():
        ratio = log_ratio.exp()
        lower = None if clip_ratio_low is None else 1.0 - clip_ratio_low
        weight = ratio.clamp(min=lower, max=1.0 + clip_ratio_high)
        is_clipped = weight != ratio
        weight = torch.where(is_valid, weight, torch.zeros_like(weight))
    # torch.where, not a product: a -inf log-prob at a padding position must give
    # neither a NaN loss nor a NaN gradient.
    safe_logprobs = torch.where(is_valid, logprobs, torch.zeros_like(logprobs))
    per_token_loss = -weight * advantages * safe_logprobs

    if importance_weights is not None:
        require_same_shape(importance_weights=importance_weights, logprobs=logprobs)
        per_token_loss = per_token_loss * importance_weights.detach()

    loss = aggregate_loss(per_token_loss, response_mask, loss_agg_mode, loss_scale_factor)
    return policy_loss_output(loss, log_ratio, response_mask, is_clipped)


class CISPOPolicyLossConfig(LossAggregationConfig):
    """CISPO's loss (`cispo_policy_loss`): a truncated, stop-gradient importance weight
    on every token's log-prob gradient."""

    type: Literal["cispo"] = "cispo"
    """Selects CISPO (MiniMax-M1, arXiv:2506.13585)."""
    clip_ratio_low: float | None = Field(None, ge=0.0, lt=1.0)
    """eps_low: the weight is clipped from below at 1 - clip_ratio_low; null (the paper's
    practice) leaves it unbounded below. verl clips both sides: set 0.2 to match it."""
    clip_ratio_high: float = Field(CISPO_CLIP_RATIO_HIGH, ge=0.0)
    """eps_high: the weight is clipped from above at 1 + clip_ratio_high."""
