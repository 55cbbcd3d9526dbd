"""DAPO's dynamic sampling, on the controller's side (Yu et al. 2025, "DAPO: An Open-Source
LLM Reinforcement Learning System at Scale", section 3.2).

A group whose samples all got the same reward (all solved, all failed) gives a
group-relative estimator no advantage, so no gradient; as a policy improves, more
groups are like that and the step's effective batch shrinks. Dynamic sampling draws
more prompt batches, generates and scores them, and keeps only the informative groups
(`roles.algorithms.groups.informative_rows`: two or more samples that did not all score
the same) until the step has ``prompts_per_step`` of them, or ``max_rounds`` rounds were
spent. Surplus groups of the last round are dropped, so a step never has more than
``prompts_per_step`` groups.

The loop, `draw_informative_groups`, takes the controller's three calls as plain
callables, so it runs without any role; `sample_informative` wires it to a controller
(`Controller.sync_step` calls it with ``dynamic_sampling.enabled``). Scoring happens here,
once per row: `Controller.prepare` gets the kept rows' scores and does not ask again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

import torch

from protocols.batch import Batch
from protocols.rl import Column, Scores
from roles.algorithms.groups import informative_rows
from roles.rollout import concat_rollouts, score_on

if TYPE_CHECKING:
    from roles.controller import Controller

T = TypeVar("T")


class NotEnoughInformativeGroups(RuntimeError):
    """``dynamic_sampling.when_short: fail`` and the rounds ran out before the step was full."""


class InformativeDraw(NamedTuple):
    """What `draw_informative_groups` returns."""

    batch: Batch
    """The step's rows, whole groups in the order drawn: at most ``groups_wanted`` of
    them; the last round's groups, none of them informative, when none was found."""
    scores: Scores
    """The reward's answer for the rows of `batch`, in row order."""
    rounds: int
    """Generation rounds spent."""
    groups_drawn: int
    """Groups generated and scored over every round."""
    groups_kept: int
    """Informative groups in `batch`."""
    tokens_generated: int
    """Response tokens generated over every round (kept or not)."""

    def metrics(self) -> dict[str, float]:
        """The step's numbers: ``train/dynamic_sampling_rounds``, ``train/groups_drawn``,
        ``train/groups_kept``, and ``perf/tokens_generated`` over every round."""
        return {"train/dynamic_sampling_rounds": float(self.rounds), "train/groups_drawn": float(self.groups_drawn),
                "train/groups_kept": float(self.groups_kept), "perf/tokens_generated": float(self.tokens_generated)}


async def draw_informative_groups(
    generate: Callable[[Batch], Awaitable[Batch]],
    score: Callable[[Batch], Awaitable[Scores]],
    next_prompts: Callable[[], Batch],
    groups_wanted: int,
    max_rounds: int,
    pad_token_id: int,
    when_short: Literal["train", "fail"] = "train",
) -> InformativeDraw:
    """Rounds of next prompts -> generate -> score, keeping the informative groups, until
    `groups_wanted` are kept or `max_rounds` rounds were spent (module docstring).

    Args:
        generate: the prompts' rollouts, rows of one prompt sharing a ``uid``.
        score: the reward's answer for every row of a rollout batch.
        next_prompts: the next batch of prompts, each with a ``uid`` no earlier batch used.
        groups_wanted: the step's groups (``prompts_per_step``).
        max_rounds: at most this many rounds (>= 1).
        pad_token_id: pads the rounds' responses to one width when they are joined.
        when_short: what the rounds running out before `groups_wanted` means: ``train``
            on what was kept; ``fail``: raise `NotEnoughInformativeGroups`.
    """
    if max_rounds < 1 or groups_wanted < 1:
        raise ValueError(f"max_rounds ({max_rounds}) and groups_wanted ({groups_wanted}) must be >= 1")
    kept: list[tuple[Batch, Scores]] = []
    kept_groups: list[str] = []
    rounds = drawn = tokens = 0
    last: tuple[Batch, Scores] | None = None
    while len(kept_groups) < groups_wanted and rounds < max_rounds:
        batch = await generate(next_prompts())
        scores = await score(batch)
        rounds += 1
        uids = batch.columns[Column.UID]
        drawn += len(set(uids))
        tokens += int(batch.tensors[Column.RESPONSE_MASK].sum())
        informative = informative_rows(torch.tensor(scores.scores, dtype=torch.float32), uids).tolist()
        found: dict[str, None] = {}  # this round's informative groups, in order, up to the step's
        for uid, useful in zip(uids, informative):
            if useful and len(kept_groups) + len(found) < groups_wanted:
                found.setdefault(uid)
        kept_groups += found
        rows = [row for row, uid in enumerate(uids) if uid in found]
        if rows:
            kept.append((batch.select(rows), select_scores(scores, rows)))
        last = (batch, scores)
    if len(kept_groups) < groups_wanted and when_short == "fail":
        raise NotEnoughInformativeGroups(
            f"dynamic sampling found {len(kept_groups)} informative groups of {groups_wanted} in {rounds} rounds "
            f"({drawn} groups drawn); raise dynamic_sampling.max_rounds, use harder or easier prompts, or set "
            "dynamic_sampling.when_short: train")
    if not kept:
        assert last is not None  # max_rounds >= 1: one round ran
        kept = [last]
    batch = concat_rollouts([piece for piece, _ in kept], pad_token_id)
    scores = Scores([s for _, piece in kept for s in piece.scores], [e for _, piece in kept for e in piece.extracted],
                    [t for _, piece in kept for t in piece.terms])
    return InformativeDraw(batch, scores, rounds, drawn, len(kept_groups), tokens)


def select_scores(scores: Scores, rows: list[int]) -> Scores:
    """The reward's answer for these rows only."""
    terms = [scores.terms[row] for row in rows] if scores.terms else []
    return Scores([scores.scores[row] for row in rows], [scores.extracted[row] for row in rows], terms)


async def sample_informative(controller: Controller, timings: dict[str, float]) -> tuple[Batch, Scores, dict[str, float]]:
    """`draw_informative_groups` with the controller's generators and reward: the step's
    batch, its scores, its numbers. ``timing/generate_s`` and ``timing/reward_s`` are the
    sums over every round; a step left short says so in ``controller.dynamic_sampling_short``."""
    config = controller.config

    async def generate(prompts: Batch) -> Batch:
        return await _adding_time(timings, "generate", controller.generate(prompts, config.sampling))

    async def score(batch: Batch) -> Scores:
        return await _adding_time(timings, "reward", score_on(controller, batch, config.call_timeout_s))

    timings.update(generate=0.0, reward=0.0)
    draw = await draw_informative_groups(generate, score, controller.next_prompts, config.prompts_per_step,
                                         config.dynamic_sampling.max_rounds, controller.tokenizer.pad_token_id,
                                         config.dynamic_sampling.when_short)
    if draw.groups_kept < config.prompts_per_step:
        controller.log.lifecycle("controller.dynamic_sampling_short", step=controller.step + 1, kept=draw.groups_kept,
                                 wanted=config.prompts_per_step, rounds=draw.rounds, drawn=draw.groups_drawn)
    return draw.batch, draw.scores, draw.metrics()


async def _adding_time(timings: dict[str, float], name: str, call: Awaitable[T]) -> T:
    """`call`'s result, its seconds added to ``timings[name]`` (one step's rounds add up)."""
    started = time.monotonic()
    try:
        return await call
    finally:
        timings[name] += time.monotonic() - started
