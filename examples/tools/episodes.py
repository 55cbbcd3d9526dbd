"""Playing calculator episodes in this process, with troupe's own episode runner: how
build.py reports the warm-started model, and how the demo can check a trained one.

The episodes are the ones a run plays (roles.episodes.EpisodeRunner, the built-in
``calculator`` environment, the ``hermes`` tool-call format, the same limits as
examples/tools-grpo.yaml), but the environments are local objects and the turns are
sampled by an `HFBackend` on the calling thread: no processes, no sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from roles.agents.environments import CalculatorEnvironment
from roles.agents.tool_calls import tool_call_format
from roles.agents.trajectory import TrajectoryLimits
from roles.episode_sampling import backend_sampler
from roles.episodes import Episode, EpisodeRunner, LocalEnvironments
from roles.generation import HFBackend
from roles.sampling import SamplingParams

LIMITS = TrajectoryLimits(max_turns=3, max_total_tokens=192, max_new_tokens_per_turn=48)
"""As examples/tools-grpo.yaml: a call turn is 36 tokens with its eos, an answer five."""


def episode_numbers(episodes: Sequence[Episode]) -> dict[str, float]:
    """Success rate (an episode's last reward is 1), the share of episodes with a
    calculator call (``tool_call_rate``), success with and without one, mean tool
    errors, and the share that ended ``done``."""
    succeeded = [bool(e.trajectory.rewards) and e.trajectory.rewards[-1] >= 1.0 for e in episodes]
    called = [e.info.get("tool_calls", 0.0) > 0 for e in episodes]

    def rate(values: Sequence[bool]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "success": rate(succeeded),
        "tool_call_rate": rate(called),
        "success_with_call": rate([s for s, c in zip(succeeded, called) if c]),
        "success_alone": rate([s for s, c in zip(succeeded, called) if not c]),
        "tool_errors": sum(e.info.get("tool_errors", 0.0) for e in episodes) / len(episodes),
        "ended_done": rate([e.trajectory.end_reason == "done" for e in episodes]),
    }


def play_episodes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]],
                  temperature: float = 1.0, limits: TrajectoryLimits = LIMITS) -> list[Episode]:
    """One calculator episode per row, turns sampled at `temperature` from torch's
    global generator (seed it for repeatable episodes)."""
    backend = HFBackend(model, tokenizer, micro_batch=128)
    params = SamplingParams(temperature=temperature)

    async def run_here(function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)  # on this thread: the model is small and this process has nothing else to do

    async def play() -> list[Episode]:
        sampler = backend_sampler(backend, params, lambda: 0, run_here)
        runner = EpisodeRunner(sampler, LocalEnvironments(CalculatorEnvironment, timeout_s=30.0), tokenizer,
                               tool_call_format("hermes"), limits, name="measure")
        return await runner.run(list(rows))

    return asyncio.run(play())


def measure_episodes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]],
                     seed: int = 0, temperature: float = 1.0) -> dict[str, float]:
    """`episode_numbers` of one episode per row, sampled with `seed`."""
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return episode_numbers(play_episodes(model, tokenizer, rows, temperature))
    finally:
        model.train(was_training)
