"""Sampling the turns of multi-turn episodes with a generator's backend: each ready
trajectory's tokens so far are a prompt, sampled once with its own token limit, all of
them in one batch (`HFBackend.generate_requests`)."""

from __future__ import annotations

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
            each request's own (the room its trajectory has left).
        version: the weights version loaded now (read when a batch starts).
        run: runs the blocking generation (the generator's compute thread).
    """
    async def sample(requests: list[TurnRequest]) -> list[SampledTurn]:
        sampled_with = version()
        generation = [GenerationRequest([request.tokens], params.model_copy(update={"n": 1, "max_new_tokens": request.max_new_tokens}))
                      for request in requests]
        outputs: list[GenerationOutput] = await run(backend.generate_requests, generation)
        turns = []
        for output in outputs:
            sampled = output.response_mask[0] > 0
            turns.append(SampledTurn(output.response_ids[0][sampled].tolist(), output.logprobs[0][sampled].tolist(),
                                     output.texts[0], sampled_with))
        return turns

    return sample
