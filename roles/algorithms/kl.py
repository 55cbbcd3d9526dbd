"""Per-token KL estimators between the policy and the reference model, and the two ways to use them.

All estimators read the sampled tokens' log-probabilities under the policy
(`logprobs`, [B, T]) and under the frozen reference (`ref_logprobs`, [B, T]) and
estimate KL(policy || reference) per token from x = logprobs - ref_logprobs
(Schulman, "Approximating KL divergence", 2020):

    k1  = x                                  unbiased, high variance, can be negative
    k2  = x^2 / 2                            biased, low variance, >= 0
    k3  = r - log r - 1,  r = exp(-x)        unbiased, low variance, >= 0
    abs = |x|

k3 exponentiates, so the log-ratio is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]
before exp and the result to [-K3_CLAMP, K3_CLAMP]; it is then finite for any
finite inputs (and has zero gradient where a clamp is active).

A name ending in "+" (k1+, k3+, abs+) is the straight-through variant: its value
is the named estimator's, its gradient is k2's (which is the unbiased gradient of
the KL when used as a loss term): value.detach() + k2 - k2.detach().

Two uses, chosen by `KLConfig.usage`:
- "reward": the KL is a per-token penalty folded into the rewards before the
  advantages are estimated (InstructGPT / classic PPO): `apply_kl_penalty`.
- "loss": the KL is aggregated like the policy loss and added to it with a
  coefficient (GRPO): `compute_kl_loss`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field

from roles.algorithms.aggregation import LossAggMode, aggregate_loss
from roles.algorithms.kl_control import FixedKLControllerConfig, KLControllerConfig
from roles.algorithms.masked import as_float_mask, masked_sum, require_rank, require_same_shape

#: The log-ratio is clamped to +-this before exponentiating in k3.
LOG_RATIO_CLAMP = 20.0
#: k3 is clamped to +-this (it is never negative, so only the upper bound acts).
K3_CLAMP = 10.0

KLEstimatorName = Literal["k1", "k2", "k3", "abs", "k1+", "k3+", "abs+"]
#: The names `compute_kl` accepts.
KL_ESTIMATOR_NAMES: tuple[str, ...] = get_args(KLEstimatorName)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logprobs - ref_logprobs, elementwise; any matching shapes, e.g. [B, T]."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logprobs - ref_logprobs)^2, elementwise; its gradient is x * dx."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = r - log r - 1 with log r = clamp(ref_logprobs - logprobs, +-20), clamped to +-10.

    Schulman's low-variance unbiased estimator of KL(policy || reference) for tokens
    sampled from the policy; >= 0 everywhere.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (log_ratio.exp() - log_ratio - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """|logprobs - ref_logprobs|, elementwise."""
    return (logprobs - ref_logprobs).abs()


_BASE_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "abs": kl_abs}


def straight_through_kl(value: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Forward `value`, backward the gradient of k2.

    out = value.detach() + k2 - k2.detach(), so out == value numerically and
    d out / d logprobs = logprobs - ref_logprobs.

    Args:
        value: [B, T] the estimate to report.
        logprobs: [B, T] policy log-probs (carrying the gradient).
        ref_logprobs: [B, T] reference log-probs.
    """
    k2 = kl_k2(logprobs, ref_logprobs)
    return value.detach() + (k2 - k2.detach())


def compute_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimatorName = "k3") -> torch.Tensor:
    """Per-token KL estimate by name.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the policy.
        ref_logprobs: [B, T] the same tokens under the reference model.
        estimator: one of KL_ESTIMATOR_NAMES; see the module docstring.

    Returns:
        [B, T] estimate (not masked: reduce it with the response mask).
    """
    require_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    base_name = estimator.removesuffix("+")
    if estimator not in KL_ESTIMATOR_NAMES:
        known = ", ".join(repr(name) for name in KL_ESTIMATOR_NAMES)
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {known}")
    value = _BASE_ESTIMATORS[base_name](logprobs, ref_logprobs)
    if estimator.endswith("+"):
        return straight_through_kl(value, logprobs, ref_logprobs)
    return value


def kl_metrics(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """The KL to the reference as logged numbers, k1 and k3, per token and per sequence.

    ``train/kl_{k}_token``: the estimator's mean over every valid response token of the
    batch; ``train/kl_{k}_seq``: its sum over each response's tokens, averaged over the
    responses. The two differ by about the mean response length.

    Args:
        logprobs: [B, T] the policy's log-probs of the sampled tokens.
        ref_logprobs: [B, T] the reference's log-probs of the same tokens.
        response_mask: [B, T] 0/1.
    """
    require_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, response_mask=response_mask)
    mask = as_float_mask(response_mask, logprobs)
    tokens = mask.sum().clamp(min=1.0)
    numbers = {}
    for name, estimator in (("k1", kl_k1), ("k3", kl_k3)):
        per_token = estimator(logprobs, ref_logprobs) * mask
        numbers[f"train/kl_{name}_token"] = float(per_token.sum() / tokens)
        numbers[f"train/kl_{name}_seq"] = float(per_token.sum(dim=-1).mean()) if mask.shape[0] else 0.0
    return numbers


def place_scores_on_last_token(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Puts each response's scalar score on its last valid token.

    Args:
        scores: [B] score per response.
        response_mask: [B, T] 0/1 (float or bool).

    Returns:
        [B, T] zeros except out[b, last valid t of b] = scores[b]. A response with no
        valid token gets no reward at all (nothing of it is trained on).
    """
    require_rank(scores, 1, "scores", "[B]")
    require_rank(response_mask, 2, "response_mask", "[B, T]")
    if scores.shape[0] != response_mask.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} rows but response_mask has {response_mask.shape[0]}")
    is_valid = response_mask.to(device=scores.device, dtype=torch.bool)
    positions = torch.arange(is_valid.shape[1], device=scores.device).expand_as(is_valid)
    last_index = torch.where(is_valid, positions, torch.full_like(positions, -1)).amax(dim=-1, keepdim=True)
    is_last = (positions == last_index) & is_valid
    return torch.where(is_last, scores.unsqueeze(-1), torch.zeros((), dtype=scores.dtype, device=scores.device))


class KLPenaltyOutput(NamedTuple):
    """Rewards with the KL penalty folded in.

    Attributes:
        token_level_rewards: [B, T] score on the last valid token minus kl_coef * kl
            on every valid token; 0 at mask-0 positions.
        kl_mean: scalar, the per-token KL averaged within each response, then over
            responses (what the KL controller is updated with).
    """

    token_level_rewards: torch.Tensor
    kl_mean: torch.Tensor


@torch.no_grad()
def apply_kl_penalty(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> KLPenaltyOutput:
    """KL as a reward: r[b, t] = score_b * [t is b's last valid token] - kl_coef * kl[b, t].

    Args:
        scores: [B] scalar score per response.
        kl: [B, T] per-token KL estimate (e.g. compute_kl(..., "k1")).
        response_mask: [B, T] 0/1 (float or bool).
        kl_coef: beta >= 0, usually the KL controller's current coefficient.

    Returns:
        KLPenaltyOutput(token_level_rewards [B, T], kl_mean scalar); no gradient.
    """
    require_same_shape(kl=kl, response_mask=response_mask)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    is_valid = response_mask.to(device=kl.device, dtype=torch.bool)
    # torch.where, not a product with the mask: KL at padding positions may be inf or NaN.
    penalty = torch.where(is_valid, kl, torch.zeros_like(kl))
    rewards = place_scores_on_last_token(scores.to(device=kl.device, dtype=kl.dtype), response_mask) - kl_coef * penalty
    return KLPenaltyOutput(token_level_rewards=rewards, kl_mean=aggregate_loss(kl, is_valid, "seq-mean-token-mean"))


@torch.no_grad()
def apply_kl_penalty_to_scores(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """KL as a reward, per response: r_b = score_b - kl_coef * sum_t m[b, t] * kl[b, t].

    The per-response form of `apply_kl_penalty` (its token rewards summed over each
    response), for the estimators that read one reward per response (GRPO, RLOO).

    Args:
        scores: [B] scalar score per response.
        kl: [B, T] per-token KL estimate; values at mask-0 positions are never read.
        response_mask: [B, T] 0/1 (float or bool).
        kl_coef: beta >= 0.

    Returns:
        [B] penalised scores; no gradient.
    """
    require_rank(scores, 1, "scores", "[B]")
    require_same_shape(kl=kl, response_mask=response_mask)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    return scores.to(kl.dtype) - kl_coef * masked_sum(kl, response_mask, dim=-1)


class KLLossOutput(NamedTuple):
    """The KL loss term and the KL it was made from.

    Attributes:
        loss: scalar kl_coef * aggregate(kl), carrying the gradient.
        kl_mean: scalar aggregate(kl), detached (for logging and the controller).
    """

    loss: torch.Tensor
    kl_mean: torch.Tensor


def compute_kl_loss(
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    loss_agg_mode: LossAggMode = "token-mean",
    loss_scale_factor: float | None = None,
) -> KLLossOutput:
    """KL as a loss term: loss = kl_coef * aggregate_loss(kl, response_mask, loss_agg_mode).

    Use the same aggregation mode as the policy loss the term is added to.

    Args:
        kl: [B, T] per-token KL estimate with gradient (e.g. compute_kl(..., "k3")).
        response_mask: [B, T] 0/1 (float or bool).
        kl_coef: beta >= 0.
        loss_agg_mode: see `aggregation`.
        loss_scale_factor: see `aggregation.aggregate_loss`.

    Returns:
        KLLossOutput(loss, kl_mean).
    """
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    kl_mean = aggregate_loss(kl, response_mask, loss_agg_mode, loss_scale_factor)
    return KLLossOutput(loss=kl_coef * kl_mean, kl_mean=kl_mean.detach())


class KLConfig(BaseModel):
    """How the policy is kept close to the reference model."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    usage: Literal["reward", "loss", "none"] = "loss"
    """Where the KL goes. "reward": subtract kl_coef * KL from the token rewards before estimating advantages
    (classic PPO); "loss": add kl_coef * aggregated KL to the policy loss (GRPO); "none":
    no KL term and no reference model needed."""
    estimator: KLEstimatorName = "k3"
    """Per-token estimator: k1, k2, k3, abs, or a straight-through k1+, k3+, abs+."""
    kl_controller: KLControllerConfig = Field(default_factory=FixedKLControllerConfig)
    """Where the coefficient kl_coef comes from: `type: fixed` or `type: adaptive`."""
