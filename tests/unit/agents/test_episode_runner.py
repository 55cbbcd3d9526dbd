"""The episode runner with in-process environments and a scripted policy (it writes the
turns a trained model would: call the calculator, then answer with its result): the
trajectories, ready trajectories going on without the slow ones, and every way an
episode ends."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from roles.agents.environments import Action, CalculatorEnvironment, Environment, Observation
from roles.agents.tool_calls import tool_call_format
from roles.agents.trajectory import TrajectoryLimits
from roles.episodes import EpisodeRunner, LocalEnvironments, SampledTurn, TurnRequest
from tests.unit.agents.chat_fixtures import characters, chat_tokenizer

HERMES = tool_call_format("hermes")
TOKENIZER = chat_tokenizer()
LIMITS = TrajectoryLimits(max_turns=3, max_total_tokens=2048, max_new_tokens_per_turn=200)


class CalculatorPolicy:
    """Calls the calculator on the question's expression, then answers with the result;
    records the episodes of each batch it samples (by their questions)."""

    def __init__(self, end_turns: bool = True) -> None:
        self.batches: list[list[str]] = []
        self.end_turns = end_turns

    async def __call__(self, requests: list[TurnRequest]) -> list[SampledTurn]:
        turns, batch = [], []
        for request in requests:
            context = TOKENIZER.decode(request.tokens, skip_special_tokens=False)
            question = re.search(r"What is (.+?)\?", context).group(1)  # type: ignore[union-attr]
            batch.append(question)
            results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", context)
            call = json.dumps({"name": "calculator", "arguments": {"expression": question}})
            text = results[-1] if results else f"<tool_call>{call}</tool_call>"
            tokens = characters(TOKENIZER, text)[: request.max_new_tokens]
            if self.end_turns:
                tokens.append(TOKENIZER.eos_token_id)
            turns.append(SampledTurn(tokens, [-0.25] * len(tokens), text, version=7, finished=self.end_turns))
        self.batches.append(batch)
        return turns


def rows(*expressions: str) -> list[dict[str, Any]]:
    return [{"prompt": f"What is {expression}?", "ground_truth": int(eval(expression))} for expression in expressions]


def runner(policy: Any, environments: Any, limits: TrajectoryLimits = LIMITS, continue_ready: bool = True,
           max_in_flight: int = 256) -> EpisodeRunner:
    return EpisodeRunner(policy, environments, TOKENIZER, HERMES, limits, "generator-0", continue_ready, max_in_flight)


async def test_calculator_episodes_call_the_tool_answer_and_end_done_with_the_reward_and_their_counts():
    environments = LocalEnvironments(CalculatorEnvironment, timeout_s=10)
    episodes = await runner(CalculatorPolicy(), environments).run(rows("12*7", "3+4"))
    for episode, answer in zip(episodes, ("84", "7")):
        trajectory = episode.trajectory
        assert trajectory.end_reason == "done" and trajectory.turns == 2 and trajectory.rewards == [0.0, 1.0]
        assert trajectory.versions == [7, 7] and episode.info == {"tool_calls": 1.0, "tool_errors": 0.0}
        response = TOKENIZER.decode(trajectory.response_ids, skip_special_tokens=False)
        assert response.endswith(f"<|im_start|>tool\n{answer}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>")
        sampled = [token for token, mask in zip(trajectory.response_ids, trajectory.loss_mask) if mask]
        assert TOKENIZER.decode(sampled, skip_special_tokens=True).endswith(f"</tool_call>{answer}")
        assert trajectory.logprobs == [-0.25 if mask else 0.0 for mask in trajectory.loss_mask]
    assert environments.episodes == {}  # every episode was ended on its environment


class Gated(Environment):
    """The calculator, except that the episode of ``slow`` answers its first turn only
    once every other episode has finished."""

    others_done = asyncio.Event()
    open_episodes = 0

    def __init__(self) -> None:
        self.calculator = CalculatorEnvironment()
        self.slow = False

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.slow = bool(row.get("slow"))
        Gated.open_episodes += not self.slow
        return self.calculator.reset(row)

    async def step(self, action: Action) -> Observation:  # type: ignore[override]
        if self.slow and action.turn == 1:
            await Gated.others_done.wait()
        observation = self.calculator.step(action)
        if observation.done and not self.slow:
            Gated.open_episodes -= 1
            if Gated.open_episodes == 0:
                Gated.others_done.set()
        return observation


async def test_ready_trajectories_go_on_while_a_slow_environment_holds_up_its_own_episode_only():
    Gated.others_done, Gated.open_episodes = asyncio.Event(), 0
    policy = CalculatorPolicy()
    batch = [{**rows("1+1")[0], "slow": True}, *rows("2+2", "3+3")]
    episodes = await runner(policy, LocalEnvironments(Gated, timeout_s=10)).run(batch)
    assert [episode.trajectory.end_reason for episode in episodes] == ["done"] * 3
    *before, last = policy.batches
    assert last == ["1+1"]  # the slow episode's second turn, once the others had finished both of theirs
    sampled_before = [question for batch in before for question in batch]
    assert sorted(sampled_before) == ["1+1", "2+2", "2+2", "3+3", "3+3"]


async def test_in_lock_step_every_turn_waits_for_every_environment():
    Gated.others_done, Gated.open_episodes = asyncio.Event(), 0
    Gated.others_done.set()  # (in lock step the slow one would wait for the others forever)
    policy = CalculatorPolicy()
    await runner(policy, LocalEnvironments(Gated, timeout_s=10), continue_ready=False).run(rows("1+1", "2+2"))
    assert policy.batches == [["1+1", "2+2"], ["1+1", "2+2"]]


async def test_at_most_max_in_flight_episodes_run_and_the_next_row_starts_as_one_ends():
    policy = CalculatorPolicy()
    environments = LocalEnvironments(CalculatorEnvironment, timeout_s=10)
    episodes = await runner(policy, environments, max_in_flight=2).run(rows("1+1", "2+2", "3+3", "4+4", "5+5"))
    assert [episode.trajectory.end_reason for episode in episodes] == ["done"] * 5
    assert [episode.trajectory.rewards[-1] for episode in episodes] == [1.0] * 5  # each row's own answer
    assert max(len(batch) for batch in policy.batches) == 2
    assert sorted(question for batch in policy.batches for question in batch) == sorted(
        ["1+1", "2+2", "3+3", "4+4", "5+5"] * 2)  # two turns each
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        runner(policy, environments, max_in_flight=0)


class Faulty(CalculatorEnvironment):
    def step(self, action: Action) -> Observation:
        question = self.row["prompt"]
        if "1+1" in question:
            raise RuntimeError("the environment broke")
        if "2+2" in question:
            import time

            time.sleep(1.0)  # past the deadline below
        return super().step(action)


async def test_an_environment_that_fails_or_stalls_ends_its_episode_with_the_reason_and_the_others_finish():
    episodes = await runner(CalculatorPolicy(), LocalEnvironments(Faulty, timeout_s=0.3)).run(rows("1+1", "2+2", "3+3"))
    assert [episode.trajectory.end_reason for episode in episodes] == ["environment_error", "environment_timeout", "done"]
    assert [episode.trajectory.turns for episode in episodes] == [1, 1, 2]  # what they had stays


async def test_a_row_the_environment_refuses_ends_before_any_turn():
    episodes = await runner(CalculatorPolicy(), LocalEnvironments(CalculatorEnvironment, timeout_s=5)).run(
        [{"ground_truth": 1}, *rows("3+3")])  # no prompt: reset raises KeyError
    assert [episode.trajectory.end_reason for episode in episodes] == ["environment_error", "done"]
    assert episodes[0].trajectory.length == 0


async def test_a_turn_cut_by_its_token_limit_ends_truncated_and_the_turn_limit_ends_an_endless_episode():
    truncated = await runner(CalculatorPolicy(end_turns=False), LocalEnvironments(CalculatorEnvironment, 5)).run(rows("5*5"))
    assert truncated[0].trajectory.end_reason == "truncated" and truncated[0].trajectory.turns == 1

    class Endless(CalculatorEnvironment):
        def step(self, action: Action) -> Observation:
            return Observation([{"role": "tool", "name": "calculator", "content": "again"}], reward=0.5)

    endless = await runner(CalculatorPolicy(), LocalEnvironments(Endless, 5)).run(rows("5*5"))
    trajectory = endless[0].trajectory
    assert trajectory.end_reason == "max_turns" and trajectory.turns == LIMITS.max_turns
    assert trajectory.rewards == [0.5, 0.5, 0.5]  # the last answer's reward counts; its tokens are not added
    assert TOKENIZER.decode(trajectory.response_ids, skip_special_tokens=False).endswith("assistant\nagain<|im_end|>")


async def test_the_backend_sampler_samples_each_trajectory_with_its_own_token_limit_and_reports_the_version():
    from roles.episode_sampling import backend_sampler
    from roles.generation import HFBackend
    from roles.sampling import SamplingParams
    from tests.unit.test_generation import tiny_model, tiny_tokenizer

    backend = HFBackend(tiny_model().eval(), tiny_tokenizer())

    async def run(function, *args):  # type: ignore[no-untyped-def]
        return function(*args)

    sample = backend_sampler(backend, SamplingParams(temperature=1.0, max_new_tokens=99, seed=3), lambda: 5, run)
    turns = await sample([TurnRequest([5, 6, 7], 4), TurnRequest([8, 9], 9)])
    assert [len(turn.tokens) <= limit for turn, limit in zip(turns, (4, 9))] == [True, True]
    assert all(len(turn.logprobs) == len(turn.tokens) and turn.version == 5 for turn in turns)
    assert all(logprob <= 0.0 for turn in turns for logprob in turn.logprobs)
    assert turns[0].text == backend.tokenizer.decode(turns[0].tokens, skip_special_tokens=True)


async def test_a_seeded_sampler_draws_each_trajectory_and_turn_apart_and_repeats_them_exactly():
    from roles.episode_sampling import backend_sampler
    from roles.generation import HFBackend
    from roles.sampling import SamplingParams
    from tests.unit.test_generation import tiny_model, tiny_tokenizer

    backend = HFBackend(tiny_model().eval(), tiny_tokenizer())

    async def run(function, *args):  # type: ignore[no-untyped-def]
        return function(*args)

    sample = backend_sampler(backend, SamplingParams(temperature=1.0, seed=11), lambda: 0, run)
    # the same context at eight rows: one seed for every request would sample one answer eight times
    requests = [TurnRequest([5, 6, 7], 12, index, 0) for index in range(8)]
    first = [turn.tokens for turn in await sample(requests)]
    assert len({tuple(tokens) for tokens in first}) > 1
    assert [turn.tokens for turn in await sample(requests)] == first  # repeatable
    later = [turn.tokens for turn in await sample([TurnRequest([5, 6, 7], 12, index, 1) for index in range(8)])]
    assert later != first  # a later turn of the same rows draws anew
