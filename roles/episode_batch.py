"""A batch of finished episodes as a rollout batch, the form every later role reads.

Per episode one row: ``prompt_ids`` (left-padded) is the trajectory's prompt; the
response (right-padded) is everything after it, sampled turns and observations, with
``response_mask`` 1 on sampled tokens only and ``response_attention_mask`` 1 on every
token (roles.agents.trajectory, protocols.rl.Column). ``behavior_logprobs`` are the
generator's, beside the sampled tokens. ``version`` is the oldest weights version that
sampled one of its turns (what staleness counts in async mode). ``score`` is the
episode's reward, the sum of its rewards or the last one (the environments score
episodes, not the reward role). ``finish_reason`` is the trajectory's end reason, and
``turns``, ``tool_calls``, ``tool_errors`` count what happened, and ``episode_trace`` is
the trace its environment calls carry (``troupe logs --trace``).

An episode whose environment failed before its first turn has no trajectory: its row
is the data row's own prompt with an empty response (nothing is trained on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedTokenizerBase

from protocols.batch import Batch
from protocols.environments import EpisodeSettings
from protocols.rl import Column
from roles.agents.tool_calls import tool_call_format
from roles.agents.trajectory import EndReason, TrajectoryLimits
from roles.episodes import Episode


INITIAL_VERSION = -1
"""The version of a row no turn was sampled for."""


class EpisodesConfig(BaseModel):
    """Multi-turn episodes (roles.episodes, docs/agents.md): each sample is an episode the
    generator plays with the environment role, scored by the environment's rewards."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    environment_role: str = "environment"
    """The role that holds the episodes (roles.environment)."""
    tool_format: str = "hermes"
    """How the policy writes tool calls: ``hermes`` or ``json`` (roles.agents.tool_calls)."""
    limits: TrajectoryLimits = Field(default_factory=TrajectoryLimits)
    """Turns and tokens per episode (``sampling.max_new_tokens`` is not used: each turn
    gets ``limits.max_new_tokens_per_turn``)."""
    max_in_flight: int = Field(256, ge=1)
    """Most episodes one generator runs at once."""
    call_timeout_s: float = Field(60.0, gt=0)
    """How long a generator waits for one environment call (keep the environment role's
    ``step_timeout_s`` shorter, so that a stalled instance restarts first)."""
    reward: Literal["sum", "last"] = "sum"
    """An episode's score: the sum of its per-turn and final rewards, or the last one."""

    @field_validator("tool_format")
    @classmethod
    def _a_known_format(cls, name: str) -> str:
        tool_call_format(name)  # refuses an unknown name with the known ones
        return name


def episode_score(rewards: Sequence[float], combine: Literal["sum", "last"]) -> float:
    """An episode's score from its rewards (0 without any)."""
    if not rewards:
        return 0.0
    return float(sum(rewards)) if combine == "sum" else float(rewards[-1])


def episode_batch(prompts: Batch, episodes: Sequence[Episode], n: int, tokenizer: PreTrainedTokenizerBase,
                  combine: Literal["sum", "last"]) -> Batch:
    """The rollout batch of `episodes`: `prompts`' columns (without ``episode_row``) each
    repeated for its `n` episodes, prompt-major, with the episodes' tensors and counts."""
    if len(episodes) != prompts.size * n:
        raise ValueError(f"{len(episodes)} episodes for {prompts.size} prompts x {n} samples")
    fallback = [ids for ids in prompts.columns[Column.PROMPT_IDS] for _ in range(n)]
    prompt_rows = [episode.trajectory.prompt_ids or list(ids) for episode, ids in zip(episodes, fallback)]
    response_rows = [episode.trajectory.response_ids for episode in episodes]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = len(episodes)
    prompt_width = max(len(ids) for ids in prompt_rows)
    response_width = max(1, max(len(ids) for ids in response_rows))
    prompt_ids = torch.full((rows, prompt_width), pad, dtype=torch.long)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    response_ids = torch.full((rows, response_width), pad, dtype=torch.long)
    response_mask = torch.zeros(rows, response_width, dtype=torch.float32)
    attention = torch.zeros(rows, response_width, dtype=torch.long)
    logprobs = torch.zeros(rows, response_width, dtype=torch.float32)
    for row, (episode, prompt) in enumerate(zip(episodes, prompt_rows)):
        trajectory, length = episode.trajectory, len(episode.trajectory.response_ids)
        prompt_ids[row, prompt_width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, prompt_width - len(prompt):] = 1
        if length:
            response_ids[row, :length] = torch.tensor(trajectory.response_ids, dtype=torch.long)
            response_mask[row, :length] = torch.tensor(trajectory.loss_mask, dtype=torch.float32)
            attention[row, :length] = 1
            logprobs[row, :length] = torch.tensor(trajectory.logprobs, dtype=torch.float32)
    sampled_text = [tokenizer.decode([token for token, mask in zip(e.trajectory.response_ids, e.trajectory.loss_mask) if mask],
                                     skip_special_tokens=True) for e in episodes]
    others = prompts.without(Column.PROMPT_IDS, "episode_row")
    repeated = others.repeat(n) if others.names() else Batch(size=rows)
    if "prompt" in repeated.columns:  # the prompt each episode started from (its environment's messages, the tools)
        repeated = repeated.with_columns(prompt=[tokenizer.decode(ids, skip_special_tokens=False) for ids in prompt_rows])
    return repeated.with_columns(**{
        Column.PROMPT_IDS: prompt_ids, Column.PROMPT_MASK: prompt_mask,
        Column.RESPONSE_IDS: response_ids, Column.RESPONSE_MASK: response_mask, Column.RESPONSE_ATTENTION: attention,
        Column.BEHAVIOR_LOGPROBS: logprobs,
        Column.VERSION: torch.tensor([min(e.trajectory.versions, default=INITIAL_VERSION) for e in episodes], dtype=torch.long),
        Column.SCORE: torch.tensor([episode_score(e.trajectory.rewards, combine) for e in episodes], dtype=torch.float32),
        Column.RESPONSE: sampled_text,
        Column.FINISH_REASON: [e.trajectory.end_reason or "" for e in episodes],
        "episode_trace": [e.trace_id for e in episodes],
        "turns": torch.tensor([e.trajectory.turns for e in episodes], dtype=torch.float32),
        "tool_calls": torch.tensor([e.info.get("tool_calls", 0.0) for e in episodes], dtype=torch.float32),
        "tool_errors": torch.tensor([e.info.get("tool_errors", 0.0) for e in episodes], dtype=torch.float32),
    })


def episode_settings(config: EpisodesConfig) -> EpisodeSettings:
    """The message form of the controller's ``episodes`` settings."""
    limits = config.limits
    return EpisodeSettings(config.environment_role, config.tool_format, limits.max_turns, limits.max_total_tokens,
                           limits.max_new_tokens_per_turn, config.max_in_flight, config.call_timeout_s, config.reward)


def episode_numbers(batch: Batch, prefix: str = "train") -> dict[str, float]:
    """A batch's episode metrics (none for a batch of single responses): mean turns, tool
    calls and tool errors per episode, and the share of episodes by end reason, as
    ``<prefix>/episode_<name>``."""
    if "turns" not in batch.tensors:
        return {}
    numbers = {f"{prefix}/episode_{name}": float(batch.tensors[name].mean()) for name in ("turns", "tool_calls", "tool_errors")}
    reasons = batch.columns[Column.FINISH_REASON]
    for reason in get_args(EndReason):
        numbers[f"{prefix}/episode_end_{reason}"] = reasons.count(reason) / len(reasons)
    return numbers
