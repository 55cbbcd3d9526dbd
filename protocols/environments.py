"""Messages between a generator running multi-turn episodes and the environment role.

One episode lives in one environment instance, from `StartEpisode` to `EndEpisode`
(or to the instance's restart, which loses it: the generator then ends the trajectory
with ``environment_error``). The generator names each episode; the instance keeps one
`roles.agents.environments.Environment` object per name.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from protocols.messages import message


@message("env.start")
class StartEpisode:  # generator -> environment
    episode: str
    """The episode's name, unique in the run (the generator's name and a counter)."""
    row: dict[str, Any]
    """The data row the episode starts from."""


@message("env.started")
class EpisodeStarted:  # environment -> generator
    messages: list[dict[str, Any]]
    """The episode's first chat messages."""
    tools: list[dict[str, Any]]
    """The tools offered, as OpenAI function schemas (empty: none)."""


@message("env.step")
class StepEpisode:  # generator -> environment
    episode: str
    text: str
    """The model turn's decoded text, special tokens left out."""
    content: str
    """The text outside tool calls."""
    calls: list[tuple[str, dict[str, Any]]]
    """The tool calls read from the turn: (name, arguments)."""
    malformed: list[tuple[str, str]]
    """The calls that could not be read: (text, problem)."""
    turn: int
    """1 for the model's first turn."""


@message("env.observation")
class EpisodeObservation:  # environment -> generator
    messages: list[dict[str, Any]]
    """Chat messages to append after the turn."""
    reward: float
    done: bool
    info: dict[str, float] = field(default_factory=dict)
    """Numbers counted per episode (``tool_calls``, ``tool_errors``, ...)."""


@message("env.end")
class EndEpisode:  # generator -> environment (a tell: nothing answers it)
    episode: str
