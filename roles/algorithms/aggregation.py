"""Reducing a per-token loss [B, T] to the scalar that is back-propagated.

The choice matters more than it looks: it decides how much a token of a long
response weighs against a token of a short one. With L[b, t] the per-token loss,
m[b, t] the response mask, n_b = sum_t m[b, t] the number of valid tokens of
sequence b and S = {b : n_b > 0} the sequences with at least one valid token:

    token-mean              sum_{b,t} m L / sum_{b,t} m
                            every valid token weighs the same (verl / DAPO default).
    seq-mean-token-sum      (1/|S|) sum_{b in S} sum_t m L
                            long responses weigh more, in proportion to length.
    seq-mean-token-mean     (1/|S|) sum_{b in S} (sum_t m L) / n_b
                            every response weighs the same (original GRPO).
    seq-mean-token-sum-norm (1/|S|) sum_{b in S} (sum_t m L) / N
                            N a constant (loss_scale_factor, default T); Dr.GRPO's
                            objective, free of the length bias of seq-mean-token-mean.
    token-sum               sum_{b,t} m L
                            no normaliser at all: the loss grows with the batch.
    token-sum-norm          sum_{b,t} m L / N
                            what verl computes under the name seq-mean-token-sum-norm
                            (verl does not average over sequences there).

No mode divides by zero: a sequence with no valid token is left out of the mean
over sequences, and a batch with no valid token at all gives a loss of 0 (with a
zero gradient), never NaN.

A trainer that accumulates gradients over micro-batches weighs each micro-batch's
loss with `micro_batch_weight`, so the accumulated loss is the mode's loss of the
whole mini-batch whatever the split.
"""

from __future__ import annotations

from typing import Literal, NoReturn, get_args

import torch

from roles.algorithms.masked import as_float_mask, require_rank, require_same_shape

LossAggMode = Literal[
    "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm", "token-sum", "token-sum-norm"
]

#: The modes `aggregate_loss` accepts.
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAggMode)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: LossAggMode = "token-mean",
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduces a per-token loss to a scalar; see the module docstring for each mode's formula.

    Args:
        per_token_loss: [B, T] loss per token.
        response_mask: [B, T] 0/1 (float or bool).
        loss_agg_mode: one of LOSS_AGG_MODES.
        loss_scale_factor: the constant N of "seq-mean-token-sum-norm" and
            "token-sum-norm"; None uses T (the padded response length). Only those
            modes read it.

    Returns:
        A scalar tensor.
    """
    require_rank(per_token_loss, 2, "per_token_loss", "[B, T]")
    require_same_shape(per_token_loss=per_token_loss, response_mask=response_mask)
    mask = as_float_mask(response_mask, per_token_loss)
    # torch.where, not a product: a NaN or inf loss at a padding position must not leak in.
    masked_loss = torch.where(mask > 0, per_token_loss, torch.zeros_like(per_token_loss))
    if loss_agg_mode == "token-mean":
        return masked_loss.sum() / mask.sum().clamp(min=1.0)
    if loss_agg_mode == "token-sum":
        return masked_loss.sum()
    if loss_agg_mode == "token-sum-norm":
        return masked_loss.sum() / _sum_normaliser(per_token_loss, loss_scale_factor)

    tokens_per_sequence = mask.sum(dim=-1)
    sum_per_sequence = masked_loss.sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-sum":
        per_sequence = sum_per_sequence
    elif loss_agg_mode == "seq-mean-token-mean":
        per_sequence = sum_per_sequence / tokens_per_sequence.clamp(min=1.0)
    elif loss_agg_mode == "seq-mean-token-sum-norm":
        per_sequence = sum_per_sequence / _sum_normaliser(per_token_loss, loss_scale_factor)
    else:
        _raise_unknown_mode(loss_agg_mode)
    has_tokens = (tokens_per_sequence > 0).to(per_token_loss.dtype)
    return (per_sequence * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def micro_batch_weight(
    loss_agg_mode: LossAggMode, micro_batch_mask: torch.Tensor, mini_batch_mask: torch.Tensor
) -> float:
    """The weight of a micro-batch's aggregated loss when gradients are accumulated.

    Summing `weight * aggregate_loss(micro-batch)` over the micro-batches of a
    mini-batch gives `aggregate_loss(mini-batch)` for every mode, provided every
    micro-batch has the mini-batch's padded length T (or loss_scale_factor is set):
        token-mean                 valid tokens of the micro-batch / of the mini-batch
        seq-mean-*                 sequences with a valid token, micro / mini
        token-sum, token-sum-norm  1 (sums add up)
    A micro-batch with nothing valid gets 0 (its loss is 0 anyway).

    Args:
        loss_agg_mode: one of LOSS_AGG_MODES.
        micro_batch_mask: [b, T] 0/1 response mask of the micro-batch.
        mini_batch_mask: [B, T] 0/1 response mask of the whole mini-batch.
    """
    if loss_agg_mode in ("token-sum", "token-sum-norm"):
        return 1.0
    if loss_agg_mode == "token-mean":
        return float(micro_batch_mask.sum() / mini_batch_mask.sum().clamp(min=1))
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        sequences = (micro_batch_mask.sum(dim=-1) > 0).sum()
        return float(sequences / (mini_batch_mask.sum(dim=-1) > 0).sum().clamp(min=1))
    _raise_unknown_mode(loss_agg_mode)


def _sum_normaliser(per_token_loss: torch.Tensor, loss_scale_factor: float | None) -> float:
    if loss_scale_factor is not None and not loss_scale_factor > 0:
        raise ValueError(f"loss_scale_factor must be > 0, got {loss_scale_factor}; pass None to use T")
    return max(per_token_loss.shape[-1], 1) if loss_scale_factor is None else loss_scale_factor


def _raise_unknown_mode(loss_agg_mode: str) -> NoReturn:
    known = ", ".join(repr(mode) for mode in LOSS_AGG_MODES)
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; choose one of {known}")
