"""PPO clipped policy loss with asymmetric clip ranges, dual clip and importance weights.

Per valid token, with A the advantage and rho = exp(logprobs - old_logprobs):

    L_clip = max(-A * rho, -A * clip(rho, 1 - eps_low, 1 + eps_high))     (PPO; DAPO's clip-higher)
    L      = min(L_clip, -c * A)   if A < 0 and dual clip is on           (Ye et al., 2020)
    L      = L_clip                otherwise
    L      = w * L                 if importance weights w are given

The dual clip bounds the loss of a negative-advantage token by c * |A|, so a token
whose probability grew a lot under the new policy cannot dominate the update. The
weights w are constants (detached here) that correct for rollouts sampled by an
older policy than `old_logprobs` came from, e.g. a truncated importance ratio
min(pi_old / pi_behaviour, C) in asynchronous training.

Two diagnostics estimate how far the update moved the policy, KL(old || new) over
the sampled tokens, with log rho = logprobs - old_logprobs:
    ppo_kl    = mean(-log rho)            k1: verl's `ppo_kl`, can be negative
    approx_kl = mean(rho - 1 - log rho)   k3: >= 0, lower variance
They are different numbers; a run compared with verl's `actor/ppo_kl` must log ppo_kl.

This module also holds what every policy loss shares: `PolicyLossOutput` (so the
trainer logs the same metrics whatever the loss), the aggregation fields of every
loss config, and the KL diagnostics. GSPO and CISPO are in `sequence_policy_loss` and
`cispo_loss`; `policy_loss_registry.compute_policy_loss` runs the one a config names.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from roles.algorithms.aggregation import LossAggMode, aggregate_loss
from roles.algorithms.masked import masked_mean, require_rank, require_same_shape

#: logprobs - old_logprobs is clamped to +-this before exponentiating.
POLICY_LOG_RATIO_CLAMP = 20.0


class PolicyLossOutput(NamedTuple):
    """The policy loss and its diagnostics, the same fields for every policy loss.

    Attributes:
        loss: scalar, aggregated by the requested mode; carries the gradient.
        clip_fraction: share of valid tokens whose ratio was clipped, detached. PPO:
            the clipped term was the larger (the token's gradient is cut); GSPO: the
            same test on the sequence ratio, so a clipped response counts all its
            tokens; CISPO: the importance weight was truncated (the gradient is kept).
        lower_clip_fraction: share of valid tokens where the dual clip bound -c * A
            was applied (always 0 without dual clip, and for GSPO and CISPO), detached.
        approx_kl: token-mean of k3 between old and new policy over valid tokens:
            rho - 1 - log rho, an estimate of KL(old || new) >= 0, detached.
        ppo_kl: token-mean of k1 over valid tokens: old_logprobs - logprobs (the
            clamped log-ratio, negated), verl's `ppo_kl`; may be negative, detached.
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    lower_clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ppo_kl: torch.Tensor


def check_clip_arguments(clip_ratio_low: float, clip_ratio_high: float, dual_clip_c: float | None = None) -> None:
    """Raises ValueError, naming the argument and a usual value, unless 0 <= eps_low < 1,
    eps_high >= 0 and the dual-clip constant is None or > 1."""
    if not 0.0 <= clip_ratio_low < 1.0:
        raise ValueError(f"clip_ratio_low must be in [0, 1), got {clip_ratio_low}; 0.2 is the usual choice")
    if not clip_ratio_high >= 0.0:
        raise ValueError(f"clip_ratio_high must be >= 0, got {clip_ratio_high}; 0.2 (or 0.28 for DAPO) is usual")
    if dual_clip_c is not None and not dual_clip_c > 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}; use e.g. 3.0, or None to disable the dual clip")


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    dual_clip_c: float | None = None,
    importance_weights: torch.Tensor | None = None,
    loss_agg_mode: LossAggMode = "token-mean",
    loss_scale_factor: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate loss; see the module docstring for the formula.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the policy being
            trained (carrying the gradient).
        old_logprobs: [B, T] the same under the policy before this update.
        advantages: [B, T] per-token advantages.
        response_mask: [B, T] 0/1 (float or bool).
        clip_ratio_low: eps_low, rho is clipped from below at 1 - eps_low.
        clip_ratio_high: eps_high, rho is clipped from above at 1 + eps_high.
        dual_clip_c: c > 1 bounds the loss of negative-advantage tokens by c * |A|;
            None disables the dual clip.
        importance_weights: optional [B, T] per-token weights multiplied into the
            loss (treated as constants).
        loss_agg_mode: see `aggregation`.
        loss_scale_factor: see `aggregation.aggregate_loss`.

    Returns:
        PolicyLossOutput(loss, clip_fraction, lower_clip_fraction, approx_kl, ppo_kl).
    """
    require_rank(logprobs, 2, "logprobs", "[B, T]")
    require_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, response_mask=response_mask
    )
    check_clip_arguments(clip_ratio_low, clip_ratio_high, dual_clip_c)
    advantages = advantages.detach()

    log_ratio = (logprobs - old_logprobs).clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_token_loss = torch.maximum(unclipped_loss, clipped_loss)
    is_clipped = clipped_loss > unclipped_loss

    is_dual_clipped = torch.zeros_like(is_clipped)
    if dual_clip_c is not None:
        dual_bound = -dual_clip_c * advantages
        is_dual_clipped = (advantages < 0) & (per_token_loss > dual_bound)
        per_token_loss = torch.where(is_dual_clipped, dual_bound, per_token_loss)

    if importance_weights is not None:
        require_same_shape(importance_weights=importance_weights, logprobs=logprobs)
        per_token_loss = per_token_loss * importance_weights.detach()

    loss = aggregate_loss(per_token_loss, response_mask, loss_agg_mode, loss_scale_factor)
    return policy_loss_output(loss, log_ratio, response_mask, is_clipped, is_dual_clipped)


def policy_loss_output(
    loss: torch.Tensor,
    log_ratio: torch.Tensor,
    response_mask: torch.Tensor,
    is_clipped: torch.Tensor,
    is_lower_clipped: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Packs a loss with the diagnostics every policy loss reports, all token means over
    the valid tokens, detached (0 where no token is valid).

    Args:
        loss: the aggregated scalar loss (keeps its gradient).
        log_ratio: [B, T] per-token log pi - log pi_old (clamped); the KL estimates
            ppo_kl = mean(-log rho) (k1) and approx_kl = mean(rho - 1 - log rho) (k3).
        response_mask: [B, T] 0/1 (float or bool).
        is_clipped: [B, T] bool, the tokens counted in clip_fraction.
        is_lower_clipped: [B, T] bool, the tokens counted in lower_clip_fraction;
            None counts none.
    """
    with torch.no_grad():
        log_ratio = log_ratio.detach()
        if is_lower_clipped is None:
            is_lower_clipped = torch.zeros_like(is_clipped)
        return PolicyLossOutput(
            loss=loss,
            clip_fraction=masked_mean(is_clipped.to(log_ratio.dtype), response_mask),
            lower_clip_fraction=masked_mean(is_lower_clipped.to(log_ratio.dtype), response_mask),
            approx_kl=masked_mean(log_ratio.exp() - 1.0 - log_ratio, response_mask),
            ppo_kl=masked_mean(-log_ratio, response_mask),
        )


class LossAggregationConfig(BaseModel):
    """The fields every policy loss config has: the trainer aggregates its entropy bonus
    and KL loss, and weighs micro-batches, by the same mode as the policy loss."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    loss_agg_mode: LossAggMode = "token-mean"
    """How per-token losses become one scalar: token-mean, seq-mean-token-sum,
    seq-mean-token-mean, seq-mean-token-sum-norm, token-sum or token-sum-norm (verl's
    seq-mean-token-sum-norm); see docs/algorithms.md."""
    loss_scale_factor: float | None = Field(None, gt=0.0)
    """Constant normaliser N of seq-mean-token-sum-norm and token-sum-norm; None uses the
    padded response length."""


class PolicyLossConfig(LossAggregationConfig):
    """PPO's clipped loss, the default policy loss: `compute_policy_loss` (or
    `ppo_policy_loss(..., **config.model_dump(exclude={"type"}))`) applies it."""

    type: Literal["ppo"] = "ppo"
    """Selects PPO's clipped loss; a `policy_loss` block without `type` is this one."""
    clip_ratio_low: float = Field(0.2, ge=0.0, lt=1.0)
    """eps_low: the ratio is clipped from below at 1 - clip_ratio_low."""
    clip_ratio_high: float = Field(0.2, ge=0.0)
    """eps_high: the ratio is clipped from above at 1 + clip_ratio_high (DAPO uses 0.28)."""
    dual_clip_c: float | None = None
    """Dual-clip constant c > 1; None disables the dual clip (the PPO paper's loss). verl's
    default loss always applies c = 3.0: set 3.0 to match it."""

    @field_validator("dual_clip_c")
    @classmethod
    def _dual_clip_above_one(cls, value: float | None) -> float | None:
        if value is not None and not value > 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {value}; use e.g. 3.0, or null to disable the dual clip")
        return value
