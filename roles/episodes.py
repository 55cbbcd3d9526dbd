"""Running a batch of multi-turn episodes to their ends: sample the turns of the
trajectories that are ready, ask environments about the others, and keep going.

`EpisodeRunner.run(rows)` starts one episode per row on the environments (at most
``max_in_flight`` at once, the next as one ends), then loops: every trajectory whose
environment has answered is ready; the ready ones sample their
next turn together in one call of `sample` (one batch on the generator); each sampled
turn is read for tool calls and sent to its environment, and the loop goes on with
whichever trajectories are ready next. With ``continue_ready`` (the default) a
trajectory does not wait for the others' environments: a slow environment holds up its
own episode only. A batch is sampled once half of the running episodes are ready, or
once the first ready one has waited up to one sampling call (a running mean of their
durations) times the share of the time the generator spends sampling, or when no answer
is pending: a decoding step costs nearly the same for one row as for many, so while
sampling is the bottleneck, batches of one would keep the generator busy for little;
while environments are, waiting would only add to every turn. Without it every turn waits for the whole batch's answers (the
lock-step loop `benchmarks/multiturn.py` compares against).

A turn that reaches its token limit without ending (its end-of-sequence token or a stop
string) cannot be read as a whole turn: the trajectory ends ``truncated``. An environment that fails or misses
its deadline ends its trajectory with ``environment_error`` / ``environment_timeout``,
keeping the tokens and rewards it had; the other episodes go on. Every trajectory gets
an end reason (roles.agents.trajectory), and every started episode is ended on its
environment.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from transformers import PreTrainedTokenizerBase

from protocols.environments import EndEpisode, EpisodeObservation, EpisodeStarted, StartEpisode, StepEpisode
from roles.agents.chat_tokens import observation_tokens, prompt_tokens
from roles.agents.environments import Action, Environment
from roles.agents.tool_calls import MalformedToolCall, ToolCall, ToolCallFormat
from roles.agents.trajectory import Trajectory, TrajectoryLimits
from protocols.envelope import new_id
from runtime.errors import ActorError, DeadlineExceeded
from runtime.tracing import current_trace_id

if TYPE_CHECKING:
    from runtime.actor import Actor


SAMPLING_SMOOTHING = 0.2
"""Weight of the newest sampling call in the running mean of their durations."""


class TurnRequest(NamedTuple):
    """One trajectory's next turn, as the sampler receives it."""

    tokens: list[int]
    """Everything so far: the prompt, earlier turns and observations."""
    max_new_tokens: int
    index: int = 0
    """Its episode's row in the batch."""
    turn: int = 0
    """The turns its trajectory has had (0 for the first)."""


class SampledTurn(NamedTuple):
    """What the sampler returns for one `TurnRequest`."""

    tokens: list[int]
    """The sampled tokens, the end-of-sequence token included when sampled."""
    logprobs: list[float]
    """Each sampled token's log-prob under the sampling weights."""
    text: str
    """The decoded turn, special tokens left out."""
    version: int
    """The weights version that sampled it."""
    finished: bool
    """Whether the turn ended by itself (its end-of-sequence token or a stop string)
    rather than at its token limit."""


Sampler = Callable[[list[TurnRequest]], Awaitable[list[SampledTurn]]]
"""Samples one turn for each request, together (one generator batch)."""


class Environments(Protocol):
    """Where episodes live: the environment role's instances (`RemoteEnvironments`)."""

    async def start(self, episode: str, row: dict[str, Any]) -> EpisodeStarted: ...
    async def step(self, request: StepEpisode) -> EpisodeObservation: ...
    async def end(self, episode: str) -> None: ...


class EnvironmentTimeout(Exception):
    """An environment did not answer within its deadline."""


class EnvironmentFailed(Exception):
    """An environment refused or failed a call, or its instance is gone."""


class RemoteEnvironments:
    """The environment role's instances, asked over the runtime. An episode stays on the
    instance it started on (the instance holds its state): each new one goes to the
    ready instance with the fewest of this runner's episodes.

    Args:
        actor: the asking actor (the generator).
        role: the environments' role name.
        timeout_s: each call's deadline (the instance's own ``step_timeout_s`` should be
            shorter, so that a stalled environment is restarted before this gives up).
    """

    def __init__(self, actor: Actor, role: str, timeout_s: float) -> None:
        self.actor = actor
        self.role = role
        self.timeout_s = timeout_s
        self.placed: dict[str, str] = {}
        """Episode -> the instance that holds it."""

    async def start(self, episode: str, row: dict[str, Any]) -> EpisodeStarted:
        instances = [record.name for record in await self.actor.lookup(role=self.role) if record.state == "ready"]
        if not instances:
            raise EnvironmentFailed(f"no ready instance of role {self.role!r}")
        load = {name: 0 for name in instances}
        for name in self.placed.values():
            if name in load:
                load[name] += 1
        self.placed[episode] = min(instances, key=lambda name: (load[name], name))
        return await self._ask(episode, StartEpisode(episode, row))

    async def step(self, request: StepEpisode) -> EpisodeObservation:
        return await self._ask(request.episode, request)

    async def end(self, episode: str) -> None:
        instance = self.placed.pop(episode, None)
        if instance is not None:
            await self.actor.tell(instance, EndEpisode(episode), timeout=self.timeout_s)

    async def _ask(self, episode: str, message: Any) -> Any:
        try:
            return await self.actor.ask(self.placed[episode], message, timeout=self.timeout_s)
        except DeadlineExceeded as error:
            raise EnvironmentTimeout(str(error)) from error
        except ActorError as error:  # a refusal, a failure in the environment, or a dead instance
            raise EnvironmentFailed(str(error)) from error


class LocalEnvironments:
    """Environments in this process, one object per episode: for a generator that needs no
    environment processes (cheap, trusted environments), tests and benchmarks. Plain
    functions run on a thread (`asyncio.to_thread`), coroutines on the loop; a call past
    `timeout_s` raises EnvironmentTimeout (a thread that does not return keeps running).

    Args:
        make: a new episode's environment (a class, or a factory).
        timeout_s: each call's deadline.
    """

    def __init__(self, make: Callable[[], Environment], timeout_s: float) -> None:
        self.make = make
        self.timeout_s = timeout_s
        self.episodes: dict[str, Environment] = {}

    async def start(self, episode: str, row: dict[str, Any]) -> EpisodeStarted:
        environment = self.make()
        messages = await self._call(environment.reset, row)
        self.episodes[episode] = environment
        return EpisodeStarted(list(messages), list(environment.tools))

    async def step(self, request: StepEpisode) -> EpisodeObservation:
        action = Action(request.text, request.content, [ToolCall(name, arguments) for name, arguments in request.calls],
                        [MalformedToolCall(text, problem) for text, problem in request.malformed], request.turn)
        observation = await self._call(self.episodes[request.episode].step, action)
        return EpisodeObservation(list(observation.messages), float(observation.reward), observation.done,
                                  {key: float(value) for key, value in observation.info.items()})

    async def end(self, episode: str) -> None:
        self.episodes.pop(episode, None)

    async def _call(self, function: Callable[[Any], Any], argument: Any) -> Any:
        call = function(argument) if inspect.iscoroutinefunction(function) else asyncio.to_thread(function, argument)
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError:
            raise EnvironmentTimeout(f"{function.__qualname__} took over {self.timeout_s:g} s") from None
        except Exception as error:  # user code: any failure ends its episode only, as on the environment role
            raise EnvironmentFailed(f"{function.__qualname__} failed: {type(error).__name__}: {error}") from error


@dataclass
class Episode:
    """One row's episode while it runs."""

    index: int
    """Its row's position in the batch."""
    name: str
    trace_id: str
    """Its own trace (``<the batch's trace>/<name>``): every environment call carries it,
    so ``troupe logs --trace`` shows its turns."""
    trajectory: Trajectory
    history: list[dict[str, Any]]
    """The conversation so far as messages (what the template renders around turns)."""
    tools: list[dict[str, Any]]
    info: dict[str, float] = field(default_factory=dict)
    """The environment's numbers, summed over the episode."""


class EpisodeRunner:
    """Runs episodes on one generator (see the module docstring).

    Args:
        sample: samples a batch of turns.
        environments: starts, steps and ends episodes.
        tokenizer: the policy's tokenizer with its chat template.
        format: how the policy writes tool calls.
        limits: the trajectories' limits.
        name: prefix of the episode names (unique in the run: the generator's name).
        continue_ready: sample the ready trajectories at once rather than waiting for
            every environment's answer each turn.
        max_in_flight: most episodes running at once (a batch larger than this starts
            the next row's episode as one ends).
    """

    def __init__(self, sample: Sampler, environments: Environments, tokenizer: PreTrainedTokenizerBase,
                 format: ToolCallFormat, limits: TrajectoryLimits, name: str, continue_ready: bool = True,
                 max_in_flight: int = 256) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.sample = sample
        self.environments = environments
        self.tokenizer = tokenizer
        self.format = format
        self.limits = limits
        self.name = name
        self.continue_ready = continue_ready
        self.max_in_flight = max_in_flight
        self._sampling_s = 0.0
        """The recent mean seconds of one sampling call."""
        self._busy_share = 0.0
        """The recent share of the time the generator spends sampling (1: always busy)."""
        self._last_started: float | None = None
        self._numbers = itertools.count()

    async def run(self, rows: Sequence[dict[str, Any]]) -> list[Episode]:
        """Every row's episode, run to its end, in the rows' order. At most
        ``max_in_flight`` run at once; the next row's episode starts as one ends."""
        queue = deque(enumerate(rows))
        episodes: dict[int, Episode] = {}
        waiting: set[asyncio.Task[Episode]] = set()  # starts and environment answers on their way
        ready: list[Episode] = []
        ready_since = 0.0
        in_flight = 0
        loop = asyncio.get_running_loop()
        try:
            while queue or ready or waiting:
                while queue and in_flight < self.max_in_flight:
                    waiting.add(loop.create_task(self._start(*queue.popleft())))
                    in_flight += 1
                # a batch gathers for up to one sampling call, scaled by how busy sampling keeps the generator
                gather_until = ready_since + self._sampling_s * self._busy_share
                if ready and not (self.continue_ready and waiting and len(ready) < in_flight / 2
                                  and loop.time() < gather_until):
                    started = loop.time()
                    if self._last_started is not None:
                        share = min(1.0, self._sampling_s / max(started - self._last_started, 1e-9))
                        self._busy_share += SAMPLING_SMOOTHING * (share - self._busy_share)
                    self._last_started = started
                    for episode, turn in zip(ready, await self._sample_turns(ready)):
                        observing = self._take_turn(episode, turn)
                        if observing is None:
                            in_flight -= 1
                        else:
                            waiting.add(observing)
                    self._sampling_s += SAMPLING_SMOOTHING * (loop.time() - started - self._sampling_s)
                    ready = []
                    continue  # episodes that ended made room for new ones
                done, _ = await asyncio.wait(
                    waiting, timeout=max(0.0, gather_until - loop.time()) if ready else None,
                    return_when=asyncio.FIRST_COMPLETED if self.continue_ready else asyncio.ALL_COMPLETED)
                if done and not ready:
                    ready_since = loop.time()
                for task in done:
                    waiting.discard(task)
                    episode = task.result()
                    episodes[episode.index] = episode
                    if episode.trajectory.finished:
                        in_flight -= 1
                    else:
                        ready.append(episode)
                ready.sort(key=lambda episode: episode.index)  # the rows' order, whatever answered first
        finally:  # every started episode is ended on its instance, however the run went
            for task in waiting:
                task.cancel()
            ended = await asyncio.gather(*(self._end(episode) for episode in episodes.values()), return_exceptions=True)
            for outcome in ended:
                if isinstance(outcome, BaseException) and not isinstance(outcome, ActorError):
                    raise outcome  # a bug, not an unreachable instance (that one lost the episode anyway)
        return [episodes[index] for index in range(len(rows))]

    async def _start(self, index: int, row: dict[str, Any]) -> Episode:
        name = f"{self.name}-{next(self._numbers)}"
        trace_id = f"{current_trace_id.get() or new_id()}/{name}"
        current_trace_id.set(trace_id)  # this task's context: the start, and its episode's later calls
        try:
            started = await self.environments.start(name, row)
        except EnvironmentTimeout:
            return self._failed(index, name, trace_id, "environment_timeout")
        except EnvironmentFailed:  # this row's episode ends; the others go on
            return self._failed(index, name, trace_id, "environment_error")
        tokens = prompt_tokens(self.tokenizer, started.messages, started.tools, self.format)
        return Episode(index, name, trace_id, Trajectory(tokens), list(started.messages), list(started.tools))

    def _failed(self, index: int, name: str, trace_id: str, reason: str) -> Episode:
        trajectory = Trajectory([])
        trajectory.end(reason)  # type: ignore[arg-type]
        return Episode(index, name, trace_id, trajectory, [], [])

    async def _sample_turns(self, episodes: list[Episode]) -> list[SampledTurn]:
        requests = [TurnRequest(episode.trajectory.prompt_ids + episode.trajectory.response_ids,
                                episode.trajectory.room_for_next_turn(self.limits), episode.index,
                                episode.trajectory.turns) for episode in episodes]
        return await self.sample(requests)

    def _take_turn(self, episode: Episode, turn: SampledTurn) -> asyncio.Task[Episode] | None:
        """Appends the sampled turn; unless that ends the trajectory (None), asks its
        environment in a task that returns the episode once the answer is in."""
        trajectory = episode.trajectory
        trajectory.add_turn(turn.tokens, turn.logprobs, turn.version)
        if not turn.finished:
            trajectory.end("truncated")
            return None
        parsed = self.format.parse(turn.text)
        request = StepEpisode(episode.name, turn.text, parsed.content, [(call.name, call.arguments) for call in parsed.calls],
                              [(bad.text, bad.problem) for bad in parsed.malformed], trajectory.turns)
        return asyncio.get_running_loop().create_task(self._observe(episode, turn.text, request))

    async def _observe(self, episode: Episode, turn_text: str, request: StepEpisode) -> Episode:
        current_trace_id.set(episode.trace_id)  # this task's context
        await self._answer(episode, turn_text, request)
        return episode

    async def _end(self, episode: Episode) -> None:
        current_trace_id.set(episode.trace_id)  # (gather runs each in a task of its own)
        await self.environments.end(episode.name)

    async def _answer(self, episode: Episode, turn_text: str, request: StepEpisode) -> None:
        """The environment's answer to a turn, appended to the trajectory."""
        trajectory = episode.trajectory
        try:
            observation = await self.environments.step(request)
        except EnvironmentTimeout:
            trajectory.end("environment_timeout")
            return
        except EnvironmentFailed:  # this episode ends; the others go on
            trajectory.end("environment_error")
            return
        for key, value in observation.info.items():
            episode.info[key] = episode.info.get(key, 0.0) + value
        if observation.done or trajectory.turns >= self.limits.max_turns:
            trajectory.rewards.append(observation.reward)  # no turn follows: the observation's tokens are not added
            trajectory.end("done" if observation.done else "max_turns")
            return
        ended_with_eos = trajectory.response_ids[-1] == self.tokenizer.eos_token_id  # (a stop string ends it otherwise)
        tokens = observation_tokens(self.tokenizer, episode.history, turn_text, ended_with_eos, observation.messages,
                                    episode.tools, self.format)
        episode.history += [{"role": "assistant", "content": turn_text}, *observation.messages]
        if trajectory.add_observation(tokens, observation.reward, self.limits) and trajectory.room_for_next_turn(self.limits) == 0:
            trajectory.end("max_tokens")
