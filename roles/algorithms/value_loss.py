"""Clipped value loss for the PPO critic.

Per valid token, with V the new values, V_old the values at rollout time and R the
returns (value targets):

    V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
    L      = 0.5 * max((V - R)^2, (V_clip - R)^2)

Taking the larger error means the critic gets no credit for moving its prediction
more than eps_v away from V_old in one update (the critic's version of the PPO trust
region). With clipping disabled, L = 0.5 * (V - R)^2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from roles.algorithms.aggregation import LossAggMode, aggregate_loss
from roles.algorithms.masked import masked_mean, require_rank, require_same_shape


class ValueLossOutput(NamedTuple):
    """The value loss and how often clipping bit.

    Attributes:
        loss: scalar, aggregated by the requested mode; carries the gradient.
        clip_fraction: share of valid tokens where the clipped error was the larger
            one (strictly), detached.
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range_value: float | None = 0.2,
    loss_agg_mode: LossAggMode = "token-mean",
    loss_scale_factor: float | None = None,
) -> ValueLossOutput:
    """Clipped squared error between predicted values and returns; formula in the module docstring.

    Args:
        values: [B, T] critic predictions (carrying the gradient).
        old_values: [B, T] critic predictions at rollout time.
        returns: [B, T] value targets, e.g. AdvantageOutput.returns.
        response_mask: [B, T] 0/1 (float or bool).
        clip_range_value: eps_v > 0, in the units of the values; None disables clipping.
        loss_agg_mode: see `aggregation`.
        loss_scale_factor: see `aggregation.aggregate_loss`.

    Returns:
        ValueLossOutput(loss, clip_fraction).
    """
    require_rank(values, 2, "values", "[B, T]")
    require_same_shape(values=values, old_values=old_values, returns=returns, response_mask=response_mask)
    if clip_range_value is not None and not clip_range_value > 0:
        raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}; pass None to disable value clipping")
    returns = returns.detach()
    old_values = old_values.detach()
    unclipped_error = (values - returns).square()
    if clip_range_value is None:
        per_token_loss = 0.5 * unclipped_error
        is_clipped = torch.zeros_like(unclipped_error, dtype=torch.bool)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
        clipped_error = (clipped_values - returns).square()
        per_token_loss = 0.5 * torch.maximum(unclipped_error, clipped_error)
        is_clipped = clipped_error > unclipped_error
    loss = aggregate_loss(per_token_loss, response_mask, loss_agg_mode, loss_scale_factor)
    with torch.no_grad():
        clip_fraction = masked_mean(is_clipped.to(values.dtype), response_mask)
    return ValueLossOutput(loss=loss, clip_fraction=clip_fraction)


class ValueLossConfig(BaseModel):
    """Parameters of `clipped_value_loss`; `clipped_value_loss(..., **config.model_dump())` applies them."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    clip_range_value: float | None = Field(0.2, gt=0.0)
    """eps_v, in the units of the values (scale it with the reward scale); None disables clipping."""
    loss_agg_mode: LossAggMode = "token-mean"
    """How per-token losses become one scalar; see docs/algorithms.md."""
    loss_scale_factor: float | None = Field(None, gt=0.0)
    """Constant normaliser N of seq-mean-token-sum-norm and token-sum-norm; None uses the
    padded response length."""
