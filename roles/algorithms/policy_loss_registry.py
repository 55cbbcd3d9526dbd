"""Choosing the policy loss from a topology: `policy_loss.type` is ppo, gspo or cispo.

Each loss has the signature its module gives it (PPO takes a dual-clip constant, GSPO
and CISPO do not); the trainer holds one config and calls

    compute_policy_loss(config, logprobs, old_logprobs, advantages, response_mask, importance_weights)

which runs the loss `config.type` names with the config's parameters, so the trainer
never switches on the type. Every loss returns the same `PolicyLossOutput`, and every
config has `loss_agg_mode` and `loss_scale_factor` (`LossAggregationConfig`), which the
trainer also reads for the entropy bonus, the KL loss and the micro-batch weights.

A `policy_loss` block without `type` is PPO's, as it was before the type existed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Union

import torch
from pydantic import Discriminator, Tag

from roles.algorithms.cispo_loss import CISPOPolicyLossConfig, cispo_policy_loss
from roles.algorithms.policy_loss import PolicyLossConfig, PolicyLossOutput, ppo_policy_loss
from roles.algorithms.sequence_policy_loss import GSPOPolicyLossConfig, gspo_policy_loss

_LOSSES: Mapping[str, Callable[..., PolicyLossOutput]] = {
    "ppo": ppo_policy_loss,
    "gspo": gspo_policy_loss,
    "cispo": cispo_policy_loss,
}

#: The names `policy_loss.type` accepts; "ppo" is the default.
POLICY_LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def _policy_loss_type(value: Any) -> str:
    # A block written before `type` existed (or without it) means PPO.
    if isinstance(value, Mapping):
        return value.get("type", "ppo")
    return getattr(value, "type", "ppo")


#: One of the policy loss configs, chosen by its `type` field (absent: ppo).
PolicyLossChoice = Annotated[
    Union[
        Annotated[PolicyLossConfig, Tag("ppo")],
        Annotated[GSPOPolicyLossConfig, Tag("gspo")],
        Annotated[CISPOPolicyLossConfig, Tag("cispo")],
    ],
    Discriminator(
        _policy_loss_type,
        custom_error_type="unknown_policy_loss",
        custom_error_message=f"policy_loss.type must be one of {', '.join(POLICY_LOSS_NAMES)}",
    ),
]


def compute_policy_loss(
    config: PolicyLossConfig | GSPOPolicyLossConfig | CISPOPolicyLossConfig,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    importance_weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Runs the policy loss `config.type` with the config's parameters.

    Args:
        config: one of the policy loss configs.
        logprobs: [B, T] log-probs of the sampled tokens under the policy being
            trained (carrying the gradient).
        old_logprobs: [B, T] the same under the policy before this update.
        advantages: [B, T] per-token advantages.
        response_mask: [B, T] 0/1 (float or bool).
        importance_weights: optional [B, T] per-token constants multiplied into every
            token's loss (e.g. the truncated ratio of the old to the behaviour policy).

    Returns:
        PolicyLossOutput(loss, clip_fraction, lower_clip_fraction, approx_kl, ppo_kl).
    """
    loss = _LOSSES[config.type]
    parameters = config.model_dump(exclude={"type"})
    return loss(logprobs, old_logprobs, advantages, response_mask, importance_weights=importance_weights, **parameters)
