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
        version: the weights version loaded now (read on `run`'s thread, with the batch).
        run: runs the blocking generation (the generator's compute thread).
    """
    def generate(generation: list[GenerationRequest]) -> tuple[int, list[GenerationOutput]]:
        # on `run`'s thread, where new weights load between calls: the version read here is the one sampling
        return version(), backend.generate_requests(generation)

    async def sample(requests: list[TurnRequest]) -> list[SampledTurn]:
        generation = [GenerationRequest([request.tokens], params.model_copy(update={"n": 1, "max_new_tokens": request.max_new_tokens}))
                      for request in requests]
        sampled_with, outputs = await run(generate, generation)
        turns = []
        for output in outputs:
            sampled = output.response_mask[0] > 0
            turns.append(SampledTurn(output.response_ids[0][sampled].tolist(), output.logprobs[0][sampled].tolist(),
                                     output.texts[0], sampled_with, output.finish_reasons[0] == "stop"))
        return turns

    return sample
