"""Rollout batches: joining the pieces generators return, and the per-batch numbers
every role reports (shared by the controller, trainer, critic and evaluator)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from protocols.batch import Batch

PROMPT_TENSORS = ("prompt_ids", "prompt_mask")
"""Left-padded: widened on the left."""
RESPONSE_TENSORS = ("response_ids", "response_mask", "behavior_logprobs", "old_logprobs", "ref_logprobs",
                    "values", "advantages", "returns")
"""Right-padded: widened on the right."""


def concat_rollouts(batches: Sequence[Batch], pad_token_id: int) -> Batch:
    """Rows of every batch in order, prompts re-padded on the left and responses on the
    right to the widest piece (generators pad each piece to its own longest row)."""
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b.tensors["prompt_ids"].shape[1] for b in batches)
    response_width = max(b.tensors["response_ids"].shape[1] for b in batches)
    widened = []
    for batch in batches:
        tensors = dict(batch.tensors)
        for name in PROMPT_TENSORS:
            if name in tensors:
                tensors[name] = _widen(tensors[name], prompt_width, left=True, fill=pad_token_id if name == "prompt_ids" else 0)
        for name in RESPONSE_TENSORS:
            if name in tensors:
                tensors[name] = _widen(tensors[name], response_width, left=False, fill=pad_token_id if name == "response_ids" else 0)
        widened.append(Batch(tensors, batch.columns, size=batch.size))
    return Batch.concat(widened)


def _widen(tensor: torch.Tensor, width: int, left: bool, fill: int) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    padding = torch.full((tensor.shape[0], missing), fill, dtype=tensor.dtype)
    return torch.cat([padding, tensor] if left else [tensor, padding], dim=1)


def without_rows_weight(batch: Batch, padding: int) -> Batch:
    """Zero the response mask of the last `padding` rows (rows `Batch.pad_to_multiple`
    repeated so every trainer rank gets as many): they then weigh nothing in a loss."""
    if padding == 0:
        return batch
    mask = batch.tensors["response_mask"].clone()
    mask[-padding:] = 0
    return batch.with_columns(response_mask=mask)


def response_lengths(batch: Batch) -> torch.Tensor:
    """[N] generated tokens per row."""
    return batch.tensors["response_mask"].sum(dim=1)
