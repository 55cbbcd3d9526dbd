"""DAPO's overlong reward shaping: a soft length penalty, and truncated responses left
out of the loss (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
System at Scale", section 3.4).

A response cut off at the sampling limit is scored as if it were finished, so a sound
line of reasoning that ran out of room is punished like a wrong one: reward noise.
DAPO offers two remedies, which `prepare_training_batch` (roles.algorithms.step)
applies before the advantages when the controller's ``overlong`` block asks for them:

- Soft overlong punishment. With L_max the sampling limit (``max_new_tokens``) and
  L_cache a buffer before it, a response of |y| tokens gets

      R_length(y) = 0                                 if |y| <= L_max - L_cache
                    ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                    -1                                if |y| > L_max

  times a penalty factor, added to its score: the penalty grows linearly over the
  buffer and is the whole factor at the limit itself.
- Overlong filtering: a truncated response (finish reason ``length``) leaves the loss.
  Its response mask is zeroed for the update, so no loss term (policy, KL, entropy,
  value) sees it and token-mean's denominator counts only the kept tokens; its score
  still enters its group's baseline, as in the paper's objective, where the filter
  acts on the loss only. The released DAPO recipe uses the penalty instead of the mask
  (a masked response teaches nothing about its length), so the two are separate settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

TRUNCATED = "length"
"""The ``finish_reason`` of a response the sampling limit cut off (roles.sampling)."""


class OverlongConfig(BaseModel):
    """DAPO's overlong reward shaping and overlong filtering; both off by default."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    buffer_tokens: int = Field(0, ge=0)
    """L_cache: the penalty grows over the last this many tokens before
    ``sampling.max_new_tokens`` (L_max); 0: no length penalty."""
    penalty: float = Field(1.0, ge=0.0)
    """The penalty factor: what a response of L_max tokens loses from its score."""
    mask_truncated: bool = False
    """Leave truncated responses (finish reason ``length``) out of the loss: their
    response mask is zeroed for the update."""

    @property
    def active(self) -> bool:
        """Shapes the scores or masks truncated responses."""
        return self.buffer_tokens > 0 or self.mask_truncated


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer_tokens: int, penalty: float = 1.0) -> torch.Tensor:
    """[B] penalty * R_length(y) of each response (module docstring): 0 up to
    L_max - L_cache, then linear down to -penalty at L_max, and -penalty beyond.

    Args:
        lengths: [B] |y|, the generated tokens of each response.
        max_length: L_max, the sampling limit.
        buffer_tokens: L_cache (0: no penalty at all, the paper's R_length with an empty
            buffer, since a response is never longer than L_max).
        penalty: the penalty factor.

    Returns:
        float32 [B], each in [-penalty, 0].
    """
    if not 0 <= buffer_tokens <= max_length:
        raise ValueError(f"buffer_tokens must be in [0, max_length={max_length}], got {buffer_tokens}; "
                         "lower overlong.buffer_tokens or raise sampling.max_new_tokens")
    lengths = lengths.float()
    if buffer_tokens == 0:
        return torch.zeros_like(lengths)
    start = max_length - buffer_tokens
    return penalty * ((start - lengths) / buffer_tokens).clamp(min=-1.0, max=0.0)


def truncated_rows(finish_reasons: Sequence[str]) -> torch.Tensor:
    """[B] bool: the responses the sampling limit cut off (finish reason ``length``)."""
    return torch.tensor([reason == TRUNCATED for reason in finish_reasons], dtype=torch.bool)


class OverlongShaping(NamedTuple):
    """What `shape_overlong` returns."""

    scores: torch.Tensor
    """[B] the scores with the length penalty added."""
    response_mask: torch.Tensor
    """[B, T] the mask the update uses: truncated rows zeroed with ``mask_truncated``."""
    metrics: dict[str, float]
    """``train/overlong_penalty_mean`` (with a buffer), ``train/truncated_share`` (with
    finish reasons)."""


def shape_overlong(scores: torch.Tensor, response_mask: torch.Tensor, finish_reasons: Sequence[str] | None,
                   config: OverlongConfig, max_length: int | None) -> OverlongShaping:
    """The scores and the update's response mask under `config` (module docstring).

    Args:
        scores: [B] the reward's score of each response.
        response_mask: [B, T] 1 on generated tokens; |y| is its row sum.
        finish_reasons: B values of the ``finish_reason`` column, or None when the batch
            has none (then ``mask_truncated`` is refused, and no truncated share is logged).
        config: the settings.
        max_length: L_max, the sampling's ``max_new_tokens`` (needed with a buffer).
    """
    metrics: dict[str, float] = {}
    if config.buffer_tokens > 0:
        if max_length is None:
            raise ValueError("overlong.buffer_tokens is set but the sampling limit L_max is unknown: pass the "
                             "sampling's max_new_tokens as max_response_length")
        penalties = overlong_penalty(response_mask.sum(dim=1), max_length, config.buffer_tokens, config.penalty)
        scores = scores + penalties.to(scores.dtype)
        metrics["train/overlong_penalty_mean"] = float(penalties.mean()) if penalties.numel() else 0.0
    if finish_reasons is None:
        if config.mask_truncated:
            raise ValueError("overlong.mask_truncated needs the batch's finish_reason column (the generator writes it); "
                             "set overlong.mask_truncated to false for batches without it")
        return OverlongShaping(scores, response_mask, metrics)
    truncated = truncated_rows(finish_reasons)
    metrics["train/truncated_share"] = float(truncated.float().mean()) if truncated.numel() else 0.0
    if config.mask_truncated:
        response_mask = response_mask * (~truncated).to(response_mask.dtype)[:, None]
    return OverlongShaping(scores, response_mask, metrics)
