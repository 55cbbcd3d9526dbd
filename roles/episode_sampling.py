"""Sampling the turns of multi-turn episodes with a generator's backend: each ready
trajectory's tokens so far are a prompt, sampled once with its own token limit, all of
them in one batch (`HFBackend.generate_requests`)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from roles.episodes import SampledTurn, Sampler, TurnRequest
from roles.sampling import GenerationOutput, GenerationRequest, SamplingParams

Blocking = Callable[..., Awaitable[Any]]
"""Runs a blocking call off the event loop (an actor's ``compute.run``)."""


def backend_sampler(backend: Any, params: SamplingParams, version: Callable[[], int], run: Blocking) -> Sampler:
    """A `Sampler` on `backend` (anything with `generate_requests`, as `HFBackend`).

    Args:
        params: the sampling settings of every turn; ``n`` is 1 and ``max_new_tokens``
            each request's own (the room its trajectory has left). With a ``seed``,
            each turn is sampled with its own seed drawn from it, its row and its turn
            number (`turn_seed`): repeatable, and independent between trajectories.
        version: the weights version loaded now (read on `run`'s thread, with the batch).
        run: runs the blocking generation (the generator's compute thread).
    """
    def generate(generation: list[GenerationRequest]) -> tuple[int, list[GenerationOutput]]:
        # on `run`'s thread, where new weights load between calls: the version read here is the one sampling
        return version(), backend.generate_requests(generation)

    async def sample(requests: list[TurnRequest]) -> list[SampledTurn]:
        generation = [GenerationRequest([request.tokens], params.model_copy(update={
            "n": 1, "max_new_tokens": request.max_new_tokens,
            "seed": None if params.seed is None else turn_seed(params.seed, request.index, request.turn)}))
            for request in requests]
        sampled_with, outputs = await run(generate, generation)
        turns = []
        for output in outputs:
            sampled = output.response_mask[0] > 0
            turns.append(SampledTurn(output.response_ids[0][sampled].tolist(), output.logprobs[0][sampled].tolist(),
                                     output.texts[0], sampled_with, output.finish_reasons[0] == "stop"))
        return turns

    return sample


def turn_seed(seed: int, index: int, turn: int) -> int:
    """The seed of row `index`'s turn `turn` in a batch sampled with `seed`.

    Every turn is its own seeded request, so one seed for all would give every
    trajectory the same random draws (the same choice at the same step in every
    episode); a hash of the three keeps them repeatable and apart."""
    digest = hashlib.blake2b(f"{seed}/{index}/{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63: torch.Generator.manual_seed's range
