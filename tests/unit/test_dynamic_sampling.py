"""DAPO's dynamic sampling loop (roles.dynamic_sampling) on a real event loop, with plain
callables that hand out prompt batches, rollouts and scores written by hand; and the
informative-group filter it keeps groups by."""

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from protocols.batch import Batch
from protocols.rl import Column, Scores
from roles.algorithms import informative_rows
from roles.controller_config import ControllerConfig
from roles.dynamic_sampling import NotEnoughInformativeGroups, draw_informative_groups

PAD = 0
N = 2  # samples per prompt


class Script:
    """Rounds of prompts, and each group's scores: round r has prompts ``r-0``, ``r-1`` ...
    whose samples' scores are ``rounds[r][i]``; round r's responses are r + 1 tokens wide
    (so joining rounds needs padding)."""

    def __init__(self, *rounds: list[tuple[float, float]]) -> None:
        self.rounds = rounds
        self.drawn = 0
        self.generated = 0
        self.scored = 0

    def next_prompts(self) -> Batch:
        round_ = self.drawn
        self.drawn += 1
        return Batch(columns={Column.UID: [f"{round_}-{i}" for i in range(len(self.rounds[round_]))]})

    async def generate(self, prompts: Batch) -> Batch:
        self.generated += 1
        uids = [uid for uid in prompts.columns[Column.UID] for _ in range(N)]
        width = int(uids[0].split("-")[0]) + 1
        rows = len(uids)
        return Batch(tensors={Column.PROMPT_IDS: torch.full((rows, 1), 5), Column.PROMPT_MASK: torch.ones(rows, 1, dtype=torch.long),
                              Column.RESPONSE_IDS: torch.full((rows, width), 7), Column.RESPONSE_MASK: torch.ones(rows, width)},
                     columns={Column.UID: uids})

    async def score(self, batch: Batch) -> Scores:
        self.scored += 1
        values = [self.score_of(uid, i % N) for i, uid in enumerate(batch.columns[Column.UID])]
        return Scores(values, [str(value) for value in values], [{"correctness": value} for value in values])

    def score_of(self, uid: str, sample: int) -> float:
        round_, prompt = (int(part) for part in uid.split("-"))
        return self.rounds[round_][prompt][sample]


async def draw(script: Script, groups_wanted: int, max_rounds: int, when_short: str = "train"):
    return await draw_informative_groups(script.generate, script.score, script.next_prompts, groups_wanted, max_rounds,
                                         PAD, when_short)


SAME, MIXED = (1.0, 1.0), (0.0, 1.0)


async def test_a_step_is_made_only_of_informative_groups_drawn_over_several_rounds():
    script = Script([MIXED, SAME, (0.0, 0.0), (1.0, 0.5)], [SAME, (0.5, 0.0), MIXED, MIXED])

    result = await draw(script, groups_wanted=3, max_rounds=4)

    assert result.batch.columns[Column.UID] == ["0-0", "0-0", "0-3", "0-3", "1-1", "1-1"]
    scores = torch.tensor(result.scores.scores)
    assert informative_rows(scores, result.batch.columns[Column.UID]).all()
    assert result.scores.scores == [script.score_of(uid, i % N) for i, uid in enumerate(result.batch.columns[Column.UID])]
    assert result.scores.extracted == [str(score) for score in result.scores.scores]
    assert [terms["correctness"] for terms in result.scores.terms] == result.scores.scores
    # round 0's responses are one token wide, round 1's two: joined with right padding
    assert_close(result.batch.tensors[Column.RESPONSE_MASK], torch.tensor([[1.0, 0.0]] * 4 + [[1.0, 1.0]] * 2))
    assert (result.rounds, result.groups_drawn, result.groups_kept) == (2, 8, 3)
    assert script.generated == script.scored == 2  # every row scored once, here
    assert result.metrics() == {"train/dynamic_sampling_rounds": 2.0, "train/groups_drawn": 8.0,
                                "train/groups_kept": 3.0, "perf/tokens_generated": 8.0 * 1 + 8.0 * 2}


async def test_a_first_round_full_of_informative_groups_needs_no_second():
    script = Script([MIXED, MIXED], [MIXED, MIXED])

    result = await draw(script, groups_wanted=2, max_rounds=3)

    assert result.rounds == 1 and script.drawn == 1
    assert result.batch.columns[Column.UID] == ["0-0", "0-0", "0-1", "0-1"]


async def test_extra_rounds_are_bounded_by_max_rounds():
    script = Script(*([MIXED, SAME, SAME, SAME] for _ in range(10)))

    result = await draw(script, groups_wanted=4, max_rounds=3)

    assert script.drawn == script.generated == script.scored == 3
    assert (result.rounds, result.groups_drawn, result.groups_kept) == (3, 12, 3)
    assert result.batch.columns[Column.UID] == ["0-0", "0-0", "1-0", "1-0", "2-0", "2-0"]


async def test_surplus_informative_groups_are_trimmed_to_the_steps_groups_in_the_order_drawn():
    script = Script([SAME, MIXED], [MIXED, (0.0, 0.5), SAME, MIXED])

    result = await draw(script, groups_wanted=2, max_rounds=5)

    assert result.batch.columns[Column.UID] == ["0-1", "0-1", "1-0", "1-0"]
    assert result.batch.size == len(result.scores.scores) == 2 * N
    assert result.groups_kept == 2 and result.groups_drawn == 6


async def test_all_groups_uninformative_until_max_rounds_trains_on_the_last_rounds_groups():
    script = Script([SAME, (0.0, 0.0)], [(0.0, 0.0), SAME], [SAME, SAME])

    result = await draw(script, groups_wanted=2, max_rounds=2)

    assert script.drawn == 2
    assert result.batch.columns[Column.UID] == ["1-0", "1-0", "1-1", "1-1"]
    assert result.scores.scores == [0.0, 0.0, 1.0, 1.0]
    assert (result.rounds, result.groups_drawn, result.groups_kept) == (2, 4, 0)


async def test_running_out_of_rounds_fails_the_step_when_asked_to():
    script = Script([SAME], [MIXED])

    with pytest.raises(NotEnoughInformativeGroups, match="0 informative groups of 1 in 1 rounds"):
        await draw(script, groups_wanted=1, max_rounds=1, when_short="fail")


async def test_a_short_step_trains_on_the_informative_groups_it_found():
    script = Script([MIXED, SAME], [SAME, SAME])

    result = await draw(script, groups_wanted=2, max_rounds=2)

    assert result.batch.columns[Column.UID] == ["0-0", "0-0"]
    assert result.groups_kept == 1 and result.rounds == 2


def test_informative_rows_are_those_of_groups_whose_scores_differ():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.2])
    groups = ["a", "b", "a", "b", "c", "a"]  # not contiguous; c has one sample

    assert informative_rows(scores, groups).tolist() == [True, True, True, True, False, True]


def test_equal_scores_and_one_sample_groups_are_not_informative_and_an_empty_batch_has_no_rows():
    assert informative_rows(torch.tensor([2.0, 2.0, 3.0]), torch.tensor([0, 0, 1])).tolist() == [False, False, False]
    assert informative_rows(torch.zeros(0), []).shape == (0,)


def controller_config(**settings) -> ControllerConfig:
    return ControllerConfig(tokenizer="t", data={"files": ["x.jsonl"]}, steps=1, **settings)


def test_dynamic_sampling_is_off_by_default_and_refused_in_async_mode_or_with_one_sample_per_prompt():
    assert not controller_config().dynamic_sampling.enabled
    assert controller_config(dynamic_sampling={"enabled": True}).dynamic_sampling.max_rounds >= 1
    with pytest.raises(ValidationError, match="sync mode only"):
        controller_config(mode="async", dynamic_sampling={"enabled": True})
    with pytest.raises(ValidationError, match="sampling.n"):
        controller_config(sampling={"n": 1}, dynamic_sampling={"enabled": True})
