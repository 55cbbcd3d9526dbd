"""A multi-turn trajectory as one token sequence: token in, token out.

A trajectory starts from its prompt's tokens (the environment's first messages rendered
by the chat template with the generation prompt). Each model turn appends the tokens
the generator sampled, exactly as sampled, with their log-probs and the weights version
that sampled them; each observation appends the tokens the chat template puts between
that turn and the next (`roles.agents.chat_tokens.observation_tokens`). Earlier turns
are never re-tokenized, so the trainer sees the very tokens the generator sampled.

For training, everything after the prompt is the response (`response_ids`); its
``loss_mask`` is 1 on sampled tokens and 0 on observation tokens, and ``logprobs`` holds
the generator's log-prob of each sampled token (0 elsewhere), aligned with it.

Limits (`TrajectoryLimits`): the number of model turns, the tokens of the whole sequence,
and the new tokens of one turn; `room_for_next_turn` says how many the next turn may
sample. Every trajectory ends with an `EndReason`, recorded for the logs and metrics:

* ``done``: the environment ended the episode;
* ``max_turns``: the model had its last turn and the episode was not over;
* ``max_tokens``: no room is left for another turn (or an observation did not fit);
* ``truncated``: a turn reached its token limit without ending (no end-of-turn token),
  so the environment cannot read it as a whole turn;
* ``environment_error`` / ``environment_timeout``: the environment failed or did not
  answer in time; the trajectory keeps what it has and its rewards so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EndReason = Literal["done", "max_turns", "max_tokens", "truncated", "environment_error", "environment_timeout"]


class TrajectoryLimits(BaseModel):
    """How long a multi-turn trajectory may grow."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_turns: int = Field(4, ge=1)
    """Most model turns in one trajectory."""
    max_total_tokens: int = Field(1024, ge=2)
    """Most tokens in the whole sequence: prompt, turns and observations."""
    max_new_tokens_per_turn: int = Field(128, ge=1)
    """Most tokens one model turn may sample."""


@dataclass
class Trajectory:
    """One episode's tokens so far. Lists, not tensors: turns append to them."""

    prompt_ids: list[int]
    """The prompt's tokens, with the template's generation prompt."""
    response_ids: list[int] = field(default_factory=list)
    """Every later token: sampled turns and observations, in order."""
    loss_mask: list[int] = field(default_factory=list)
    """Per response token: 1 where the generator sampled it, 0 for observation tokens."""
    logprobs: list[float] = field(default_factory=list)
    """Per response token: the generator's log-prob where sampled, 0.0 elsewhere."""
    versions: list[int] = field(default_factory=list)
    """Per model turn: the weights version that sampled it."""
    rewards: list[float] = field(default_factory=list)
    """Per environment answer: its reward."""
    turns: int = 0
    """Model turns so far."""
    end_reason: EndReason | None = None
    """Why it ended; None while it goes on."""

    @property
    def length(self) -> int:
        """Tokens in the whole sequence."""
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def finished(self) -> bool:
        return self.end_reason is not None

    def add_turn(self, tokens: list[int], logprobs: list[float], version: int) -> None:
        """Appends one sampled turn, as sampled."""
        if len(tokens) != len(logprobs):
            raise ValueError(f"a turn of {len(tokens)} tokens came with {len(logprobs)} log-probs")
        self._require_open()
        self.response_ids += tokens
        self.loss_mask += [1] * len(tokens)
        self.logprobs += logprobs
        self.versions.append(version)
        self.turns += 1

    def add_observation(self, tokens: list[int], reward: float, limits: TrajectoryLimits) -> bool:
        """Appends the observation's tokens when they fit in ``max_total_tokens`` with
        room for one more sampled token, and records its reward either way. Returns
        whether they were appended; if not, the trajectory ends with ``max_tokens``."""
        self._require_open()
        self.rewards.append(reward)
        if self.length + len(tokens) + 1 > limits.max_total_tokens:
            self.end("max_tokens")
            return False
        self.response_ids += tokens
        self.loss_mask += [0] * len(tokens)
        self.logprobs += [0.0] * len(tokens)
        return True

    def room_for_next_turn(self, limits: TrajectoryLimits) -> int:
        """Tokens the next turn may sample: 0 when the trajectory is over or full."""
        if self.finished or self.turns >= limits.max_turns:
            return 0
        return max(0, min(limits.max_new_tokens_per_turn, limits.max_total_tokens - self.length))

    def end(self, reason: EndReason) -> None:
        """Records why the trajectory ended (the first reason stays)."""
        if self.end_reason is None:
            self.end_reason = reason

    def _require_open(self) -> None:
        if self.finished:
            raise ValueError(f"the trajectory ended already ({self.end_reason})")
