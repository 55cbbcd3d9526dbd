"""Messages of multi-turn episodes: the controller asks a generator to run a batch of
them (`GenerateEpisodes`, answered with `protocols.rl.Rollouts`), and the generator
talks to the environment role about each one.

One episode lives in one environment instance, from `StartEpisode` to `EndEpisode`
(or to the instance's restart, which loses it: the generator then ends the trajectory
with ``environment_error``). The generator names each episode; the instance keeps one
`roles.agents.environments.Environment` object per name.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from protocols.batch import Batch
from protocols.messages import message
from protocols.rl import Sampling
from protocols.specs import BatchSpec

EPISODES_BATCH = BatchSpec(columns={"prompt_ids": list[int], "episode_row": dict[str, Any]})
"""What a generator is asked to run episodes from."""


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


@message("env.episode_settings")
class EpisodeSettings:  # part of GenerateEpisodes: controller -> generator
    """How a generator runs a batch of episodes (the controller's ``episodes`` settings)."""

    environment_role: str
    """The role whose instances hold the episodes."""
    tool_format: str
    """How the policy writes tool calls (roles.agents.tool_calls)."""
    max_turns: int
    max_total_tokens: int
    max_new_tokens_per_turn: int
    max_in_flight: int
    """Most episodes one generator runs at once."""
    call_timeout_s: float
    """Deadline of one environment call, as the generator waits for it."""
    reward: Literal["sum", "last"]
    """An episode's score: the sum of its rewards, or the last one."""


@message("rl.generate_episodes")
class GenerateEpisodes:  # controller -> generator
    batch: Annotated[Batch, EPISODES_BATCH]
    """One row per prompt: ``prompt_ids`` (its templated first turn, the prompt of an
    episode whose environment fails to start) and ``episode_row`` (the data row the
    environment starts from), and any other columns, copied onto every sample."""
    sampling: Sampling
    """How turns are sampled (``n`` episodes per row; ``max_new_tokens`` is the settings')."""
    settings: EpisodeSettings
