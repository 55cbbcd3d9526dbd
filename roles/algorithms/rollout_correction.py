"""Rollout correction: weighting the policy loss by how far the generator's log-probs
are from the trainer's, and measuring that distance every step.

The generator samples with its own engine and precision (vLLM, bfloat16) and, in async
mode, with weights up to ``max_staleness`` versions old, so pi_behavior (the generator's
log-probs, ``behavior_logprobs``) is not pi_old (the policy before the update, the
plan's old log-probs: roles.algorithms.old_logprobs). Per valid token t of response b,
with m the response mask:

    r[b, t] = exp(min(log pi_old - log pi_behavior, 20))              token level
    r_b     = exp(min(sum_t m log r[b, t] / n_b, 20))   geometric mean    sequence level
    r_b     = exp(min(sum_t m log r[b, t], 20))         product           (verl's sequence)

and the policy loss of each token is multiplied by a constant (detached) weight w:

    truncate  w = min(r, upper)                            truncated IS (Yao et al., 2025)
    mask      w = r if lower <= r <= upper, else 0         masked IS (Liu, Li et al., 2025)

at the chosen level (a sequence-level r is every token of its response). The truncation
bounds one side only: a ratio below 1 already shrinks its token's weight. The band of
``mask`` is closed (a ratio equal to a bound is kept). A masked token's weight is 0, so
its loss leaves the sum; with ``denominator: all`` it stays in the aggregation's count
(a mini-batch's loss does not depend on how its rows are grouped into micro-batches, and
the update's own log-probs can be the old ones), with ``denominator: kept`` it leaves the
whole loss (policy, entropy bonus, KL loss), as verl's rejection sampling does. A batch
where every token is masked gives a policy loss of 0 with a zero gradient.

The sequence default is the geometric mean: a product of hundreds of ratios near 1 is
far from 1 for a long response and near 1 for a short one, so one threshold cannot fit
both; the geometric mean is the per-token average and GSPO's choice. ``product`` is the
sequence-level importance weight of the off-policy estimator (verl's ``sequence``).

Mismatch metrics (`mismatch_metrics`), from KL(pi_behavior || pi_old) estimated on the
generator's samples with x = log pi_behavior - log pi_old (roles.algorithms.kl):
``train/rollout_kl_{k1,k3}_token`` (mean over valid tokens) and ``_seq`` (per-response
sum, mean over responses), the token ratio r's ``mean``, ``min``, ``max``, ``p05``,
``p50``, ``p95`` (``train/rollout_ratio_*``), and with a correction the share of valid
tokens ``train/rollout_masked_share`` and ``train/rollout_truncated_share``.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.rl import RolloutCorrection
from roles.algorithms.kl import kl_k1, kl_k3
from roles.algorithms.masked import as_float_mask, require_same_shape

#: log pi_old - log pi_behavior (per token, and per response) is clamped above at this before exp.
ROLLOUT_LOG_RATIO_CLAMP = 20.0
#: The quantiles of the token ratio logged as ``train/rollout_ratio_p05`` ..
RATIO_QUANTILES = (0.05, 0.5, 0.95)

CorrectionLevel = Literal["token", "sequence"]
SequenceRatio = Literal["geometric_mean", "product"]


class NoRolloutCorrectionConfig(BaseModel):
    """No correction: the loss is not weighted (the mismatch is still logged)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["none"] = "none"
    """Selects no correction."""


class _RatioConfig(BaseModel):
    """The level of the ratio, shared by the two corrections."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    level: CorrectionLevel = "token"
    """``token``: one ratio per token; ``sequence``: one per response, on all its tokens
    (a masked response goes whole)."""
    sequence_ratio: SequenceRatio = "geometric_mean"
    """Sequence level: a response's ratio is its tokens' geometric mean, or their
    ``product`` (verl's ``sequence``)."""


class TruncatedISConfig(_RatioConfig):
    """Truncated importance sampling: the loss weighted by min(r, upper)."""

    type: Literal["truncate"] = "truncate"
    """Selects truncated importance sampling."""
    upper: float = Field(2.0, gt=0)
    """The truncation: weights above it are cut to it."""


class MaskedISConfig(_RatioConfig):
    """Masked importance sampling: the loss weighted by r, and by 0 where r is outside [lower, upper]."""

    type: Literal["mask"] = "mask"
    """Selects masked importance sampling."""
    upper: float = Field(2.0, gt=0)
    """The kept band's upper end (a ratio equal to it is kept)."""
    lower: float | None = Field(None, gt=0)
    """The kept band's lower end; None: 1 / upper (verl's default)."""
    denominator: Literal["all", "kept"] = "all"
    """``all``: a masked token's loss is 0 and it still counts in the aggregation's
    denominator; ``kept``: masked tokens leave the loss altogether (verl's), which needs
    the old log-probs before the update (``recompute_logprobs: auto`` then recomputes)."""

    @model_validator(mode="after")
    def _band_not_empty(self) -> MaskedISConfig:
        if self.lower is not None and self.lower > self.upper:
            raise ValueError(f"rollout_correction lower ({self.lower}) is above upper ({self.upper}): no ratio "
                             "would be kept; set lower <= upper")
        if self.lower is None and 1.0 / self.upper > self.upper:  # the default lower, 1 / upper, would be above it
            raise ValueError(f"rollout_correction upper ({self.upper}) is below 1, so the default lower (1 / upper = "
                             f"{1.0 / self.upper:.4g}) is above it and no ratio would be kept: set upper >= 1, or "
                             "write lower <= upper")
        return self


RolloutCorrectionConfig = Annotated[
    Union[NoRolloutCorrectionConfig, TruncatedISConfig, MaskedISConfig], Field(discriminator="type")
]


def rollout_correction_setting(written: RolloutCorrectionConfig | None, asynchronous: bool,
                               importance_cap: float) -> RolloutCorrectionConfig:
    """The correction a controller runs with: the one written, else the one its settings
    meant before ``rollout_correction`` existed: in async mode token-level truncation at
    ``importance_cap``, in sync mode none."""
    if written is not None:
        return written
    return TruncatedISConfig(upper=importance_cap) if asynchronous else NoRolloutCorrectionConfig()


def rollout_correction_plan(config: RolloutCorrectionConfig) -> RolloutCorrection | None:
    """The `Train` message's form of a setting (None: no correction)."""
    if isinstance(config, TruncatedISConfig):
        return RolloutCorrection("truncate", config.level, config.sequence_ratio, 0.0, config.upper, "all")
    if isinstance(config, MaskedISConfig):
        lower = config.lower if config.lower is not None else 1.0 / config.upper
        return RolloutCorrection("mask", config.level, config.sequence_ratio, lower, config.upper, config.denominator)
    return None


def needs_old_logprobs_before_update(correction: RolloutCorrection | None) -> bool:
    """Whether the trainer needs the old log-probs of a whole mini-batch before its first
    micro-batch: ``denominator: kept`` counts the kept tokens of the mini-batch."""
    return correction is not None and correction.mode == "mask" and correction.denominator == "kept"


def rollout_log_ratio(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor,
                      response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] log r = min(log pi_old - log pi_behavior, 20) on valid tokens, 0 elsewhere
    (detached; whatever the padding holds, it does not leak in)."""
    require_same_shape(old_logprobs=old_logprobs, behavior_logprobs=behavior_logprobs, response_mask=response_mask)
    log_ratio = (old_logprobs.detach() - behavior_logprobs).clamp(max=ROLLOUT_LOG_RATIO_CLAMP)
    return torch.where(response_mask > 0, log_ratio, torch.zeros_like(log_ratio))


def sequence_log_ratio(log_ratio: torch.Tensor, response_mask: torch.Tensor,
                       sequence_ratio: SequenceRatio) -> torch.Tensor:
    """[B] log r_b of each response from `rollout_log_ratio`'s [B, T]: the mean of its
    valid tokens' log r (``geometric_mean``) or their sum (``product``), clamped above at
    20; 0 (r_b = 1) for a response with no valid token."""
    mask = as_float_mask(response_mask, log_ratio)
    total = (log_ratio * mask).sum(dim=-1)
    if sequence_ratio == "geometric_mean":
        total = total / mask.sum(dim=-1).clamp(min=1.0)
    elif sequence_ratio != "product":
        raise ValueError(f"sequence_ratio must be geometric_mean or product, got {sequence_ratio!r}")
    return total.clamp(max=ROLLOUT_LOG_RATIO_CLAMP)


class CorrectionWeights(NamedTuple):
    """What `rollout_correction_weights` returns; every tensor [B, T], detached."""

    weights: torch.Tensor
    """w: the factor on each token's policy loss; 0 on padding and on masked tokens."""
    kept: torch.Tensor
    """0/1 float: the valid tokens that are not masked."""
    truncated: torch.Tensor
    """bool: the valid tokens whose weight was cut to ``upper``."""
    token_ratio: torch.Tensor
    """The untruncated token ratio r (0 on padding): train/importance_ratio's mean."""


def rollout_correction_weights(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor,
                               response_mask: torch.Tensor, correction: RolloutCorrection) -> CorrectionWeights:
    """The loss weights of `correction` (see the module docstring for the formulas).

    Args:
        old_logprobs: [B, T] log pi_old of the sampled tokens (detached here).
        behavior_logprobs: [B, T] log pi_behavior, the generator's.
        response_mask: [B, T] 0/1.
        correction: the plan's correction.
    """
    mask = as_float_mask(response_mask, old_logprobs)
    valid = mask > 0
    log_ratio = rollout_log_ratio(old_logprobs, behavior_logprobs, mask)
    token_ratio = torch.where(valid, log_ratio.exp(), torch.zeros_like(log_ratio))
    if correction.level == "token":
        ratio = token_ratio
    elif correction.level == "sequence":
        ratio = sequence_log_ratio(log_ratio, mask, correction.sequence_ratio).exp()[:, None].expand_as(log_ratio)
    else:
        raise ValueError(f"rollout correction level must be token or sequence, got {correction.level!r}")
    if correction.mode == "truncate":
        truncated = valid & (ratio > correction.upper)
        weights = torch.where(valid, ratio.clamp(max=correction.upper), torch.zeros_like(ratio))
        return CorrectionWeights(weights, mask, truncated, token_ratio)
    if correction.mode != "mask":
        raise ValueError(f"rollout correction mode must be truncate or mask, got {correction.mode!r}")
    keep = valid & (ratio >= correction.lower) & (ratio <= correction.upper)
    weights = torch.where(keep, ratio, torch.zeros_like(ratio))
    return CorrectionWeights(weights, keep.to(mask.dtype), torch.zeros_like(valid), token_ratio)


class MismatchMetrics(NamedTuple):
    """What `mismatch_metrics` returns, split by how a trainer may combine micro-batches."""

    token_means: dict[str, float]
    """Means over valid tokens: combine micro-batches weighted by their token share."""
    sequence_means: dict[str, float]
    """Means over responses with a valid token: weighted by their share of those."""
    extremes: dict[str, float]
    """Min, max, quantiles: only right over the whole batch (empty without a valid token)."""

    def merged(self) -> dict[str, float]:
        """Every metric, by name."""
        return {**self.token_means, **self.sequence_means, **self.extremes}

    def shares(self, token_share: float, sequence_share: float) -> dict[str, float]:
        """The means of a micro-batch, each times its share of the mini-batch's tokens or
        responses: summed over the micro-batches, the mini-batch's means (the extremes are
        left out: a sum of maxima is no maximum)."""
        return {**{name: token_share * value for name, value in self.token_means.items()},
                **{name: sequence_share * value for name, value in self.sequence_means.items()}}


def sequence_share(micro_batch_mask: torch.Tensor, mini_batch_mask: torch.Tensor) -> float:
    """The micro-batch's responses with a valid token over the mini-batch's ([b, T], [B, T] masks)."""
    responses = (micro_batch_mask.sum(dim=-1) > 0).sum()
    return float(responses / (mini_batch_mask.sum(dim=-1) > 0).sum().clamp(min=1))


def mismatch_metrics(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, response_mask: torch.Tensor,
                     correction: RolloutCorrection | None = None) -> MismatchMetrics:
    """How far the generator's log-probs are from the old ones (names in the module docstring).

    Args:
        old_logprobs, behavior_logprobs, response_mask: [B, T] as `rollout_correction_weights`.
        correction: the plan's correction, for the masked and truncated shares; None: not logged.
    """
    mask = as_float_mask(response_mask, old_logprobs)
    valid = mask > 0
    tokens = mask.sum().clamp(min=1.0)
    has_tokens = mask.sum(dim=-1) > 0
    responses = has_tokens.sum().clamp(min=1)
    behavior, old = behavior_logprobs.detach(), old_logprobs.detach()
    token_means: dict[str, float] = {}
    sequence_means: dict[str, float] = {}
    for name, estimator in (("k1", kl_k1), ("k3", kl_k3)):
        per_token = torch.where(valid, estimator(behavior, old), torch.zeros_like(old))
        token_means[f"train/rollout_kl_{name}_token"] = float(per_token.sum() / tokens)
        sequence_means[f"train/rollout_kl_{name}_seq"] = float(per_token.sum(dim=-1)[has_tokens].sum() / responses)
    ratio = rollout_log_ratio(old, behavior, mask).exp()
    token_means["train/rollout_ratio_mean"] = float((ratio * mask).sum() / tokens)
    if correction is not None:
        weights = rollout_correction_weights(old, behavior, mask, correction)
        token_means["train/rollout_masked_share"] = float((mask - weights.kept).sum() / tokens)
        token_means["train/rollout_truncated_share"] = float(weights.truncated.sum() / tokens)
    extremes: dict[str, float] = {}
    if valid.any():
        values = ratio[valid].sort().values
        extremes = {"train/rollout_ratio_min": float(values[0]), "train/rollout_ratio_max": float(values[-1])}
        for q in RATIO_QUANTILES:
            extremes[f"train/rollout_ratio_p{round(q * 100):02d}"] = _quantile_of_sorted(values, q)
    return MismatchMetrics(token_means, sequence_means, extremes)


def _quantile_of_sorted(values: torch.Tensor, q: float) -> float:
    """The q-quantile of sorted 1-D `values`, interpolated linearly between the two
    nearest ranks (torch.quantile's default, which refuses more than 2**24 values)."""
    position = q * (values.numel() - 1)
    below = int(position)
    above = min(below + 1, values.numel() - 1)
    return float(values[below] + (values[above] - values[below]) * (position - below))
