"""Rollout batches: asking every generator and reward instance for their share, joining
the pieces they return, and the per-batch numbers every role reports (shared by the
controller, trainer, critic and evaluator)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from protocols.batch import Batch
from protocols.rl import Generate, Rollouts, Score, Scores

if TYPE_CHECKING:
    from roles.generation import SamplingParams
    from runtime.actor import Actor

PROMPT_TENSORS = ("prompt_ids", "prompt_mask")
"""Left-padded: widened on the left."""
RESPONSE_TENSORS = ("response_ids", "response_mask", "behavior_logprobs", "old_logprobs", "ref_logprobs",
                    "values", "advantages", "returns")
"""Right-padded: widened on the right."""


async def generate_on(actor: Actor, prompts: Batch, sampling: SamplingParams, pad_token_id: int, timeout: float) -> Batch:
    """Sample on every ready generator at once, each its share of the prompts (a dying
    one's share goes to another); the pieces joined in prompt order."""
    generators = max(1, len(await actor.lookup(role="generator")))
    pieces = [piece for piece in prompts.split(generators) if piece.size]
    replies: list[Rollouts] = await asyncio.gather(*(
        actor.ask_role("generator", Generate(piece, sampling.model_dump()), timeout) for piece in pieces
    ))
    return concat_rollouts([reply.batch for reply in replies], pad_token_id)


async def score_on(actor: Actor, batch: Batch, timeout: float) -> Scores:
    """Every response scored by the reward role, spread over its ready instances."""
    rewards = max(1, len(await actor.lookup(role="reward")))
    pieces = [piece for piece in batch.split(rewards) if piece.size]
    replies: list[Scores] = await asyncio.gather(*(
        actor.ask_role("reward", Score(p.columns["prompt"], p.columns["response"], p.columns["ground_truth"],
                                       p.columns["data_source"]), timeout)
        for p in pieces
    ))
    return Scores([s for r in replies for s in r.scores], [e for r in replies for e in r.extracted],
                  [t for r in replies for t in r.terms])


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


def response_id_lists(batch: Batch) -> list[list[int]]:
    """Each row's generated token ids, without padding."""
    ids, mask = batch.tensors["response_ids"], batch.tensors["response_mask"] > 0
    return [row[keep].tolist() for row, keep in zip(ids, mask)]
