"""Rollout batches: waiting for the roles a run needs, asking every generator and reward
instance for their share, joining the pieces they return, and the per-batch numbers
every role reports (shared by the controller, trainer, critic and evaluator); the
sampling settings' wire form."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from protocols.batch import Batch
from protocols.environments import EpisodeSettings, GenerateEpisodes
from protocols.rl import Column, Generate, Rollouts, Sampling, Score, Scores
from roles.sampling import SamplingParams
from runtime.errors import ActorError

if TYPE_CHECKING:
    from runtime.actor import Actor

PROMPT_TENSORS = (Column.PROMPT_IDS, Column.PROMPT_MASK)
"""Left-padded: widened on the left."""
RESPONSE_TENSORS = (Column.RESPONSE_IDS, Column.RESPONSE_MASK, Column.RESPONSE_ATTENTION, Column.BEHAVIOR_LOGPROBS,
                    Column.OLD_LOGPROBS, Column.REF_LOGPROBS, Column.VALUES, Column.ADVANTAGES, Column.RETURNS)
"""Right-padded: widened on the right."""


def sampling_message(params: SamplingParams) -> Sampling:
    """The `Generate` message's form of the user-facing sampling settings."""
    return Sampling(**{**params.model_dump(), "stop": tuple(params.stop)})


def sampling_params(sampling: Sampling) -> SamplingParams:
    """The generator's side: the settings of a `Generate` message, validated again (the
    sender may be any client of the run)."""
    return SamplingParams(**dataclasses.asdict(sampling))


async def wait_for_roles(actor: Actor, needed: Mapping[str, int], timeout: float) -> None:
    """Until each role in `needed` has that many ready instances (every trainer rank, one
    generator ...), asking the registry every half second.

    Raises:
        ActorError: some are still missing after `timeout` seconds; the text says which.
    """
    deadline = time.monotonic() + timeout
    while True:
        missing = {}
        for role, count in needed.items():
            ready = [record for record in await actor.lookup(role=role) if record.state == "ready"]
            if len(ready) < count:
                missing[role] = f"{len(ready)}/{count}"
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ActorError(f"roles not ready after {timeout:g} s: {missing}")
        await asyncio.sleep(0.5)


async def generate_on(actor: Actor, prompts: Batch, sampling: SamplingParams, pad_token_id: int, timeout: float) -> Batch:
    """Sample on every ready generator at once, each its share of the prompts (a dying
    one's share goes to another); the pieces joined in prompt order."""
    generators = max(1, len(await actor.lookup(role="generator")))
    pieces = [piece for piece in prompts.split(generators) if piece.size]
    replies: list[Rollouts] = await asyncio.gather(*(
        actor.ask_role("generator", Generate(piece, sampling_message(sampling)), timeout) for piece in pieces
    ))
    return concat_rollouts([reply.batch for reply in replies], pad_token_id)


async def generate_episodes_on(actor: Actor, prompts: Batch, sampling: SamplingParams, settings: EpisodeSettings,
                               pad_token_id: int, timeout: float) -> Batch:
    """`generate_on` for multi-turn episodes: every ready generator runs its share of the
    prompts' episodes (`GenerateEpisodes`); the pieces joined in prompt order."""
    generators = max(1, len(await actor.lookup(role="generator")))
    pieces = [piece for piece in prompts.split(generators) if piece.size]
    replies: list[Rollouts] = await asyncio.gather(*(
        actor.ask_role("generator", GenerateEpisodes(piece, sampling_message(sampling), settings), timeout) for piece in pieces
    ))
    return concat_rollouts([reply.batch for reply in replies], pad_token_id)


def scores_of_episodes(batch: Batch) -> Scores:
    """The scores a batch of episodes came with (their environments' rewards)."""
    return Scores(batch.tensors[Column.SCORE].tolist(), [None] * batch.size, [{} for _ in range(batch.size)])


async def score_on(actor: Actor, batch: Batch, timeout: float) -> Scores:
    """Every response scored by the reward role, spread over its ready instances."""
    rewards = max(1, len(await actor.lookup(role="reward")))
    pieces = [piece for piece in batch.split(rewards) if piece.size]
    replies: list[Scores] = await asyncio.gather(*(
        actor.ask_role("reward", Score(p.columns[Column.PROMPT], p.columns[Column.RESPONSE], p.columns[Column.GROUND_TRUTH],
                                       p.columns[Column.DATA_SOURCE]), timeout)
        for p in pieces
    ))
    return Scores([s for r in replies for s in r.scores], [e for r in replies for e in r.extracted],
                  [t for r in replies for t in r.terms])


def concat_rollouts(batches: Sequence[Batch], pad_token_id: int) -> Batch:
    """Rows of every batch in order, prompts re-padded on the left and responses on the
    right to the widest piece (generators pad each piece to its own longest row)."""
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b.tensors[Column.PROMPT_IDS].shape[1] for b in batches)
    response_width = max(b.tensors[Column.RESPONSE_IDS].shape[1] for b in batches)
    widened = []
    for batch in batches:
        tensors = dict(batch.tensors)
        for name in PROMPT_TENSORS:
            if name in tensors:
                tensors[name] = _widen(tensors[name], prompt_width, left=True, fill=pad_token_id if name == Column.PROMPT_IDS else 0)
        for name in RESPONSE_TENSORS:
            if name in tensors:
                tensors[name] = _widen(tensors[name], response_width, left=False, fill=pad_token_id if name == Column.RESPONSE_IDS else 0)
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
    mask = batch.tensors[Column.RESPONSE_MASK].clone()
    mask[-padding:] = 0
    return batch.with_columns(**{Column.RESPONSE_MASK: mask})


def response_lengths(batch: Batch) -> torch.Tensor:
    """[N] generated tokens per row."""
    return batch.tensors[Column.RESPONSE_MASK].sum(dim=1)


def response_id_lists(batch: Batch) -> list[list[int]]:
    """Each row's generated token ids, without padding."""
    ids, mask = batch.tensors[Column.RESPONSE_IDS], batch.tensors[Column.RESPONSE_MASK] > 0
    return [row[keep].tolist() for row, keep in zip(ids, mask)]
