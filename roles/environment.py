"""The environment role: holds multi-turn episodes and answers a generator's turns.

Each episode is one `roles.agents.environments.Environment` object, made when the
generator starts it (`StartEpisode`) and dropped when it ends (`EndEpisode`). The class
is a built-in (`BUILT_IN_ENVIRONMENTS`) or any ``package.module:Class`` with its
constructor arguments, as custom rewards are named.

Calls of different episodes run at the same time: their handlers are urgent (each in
its own task as it arrives, rather than one after another through the mailbox), which is
safe because an episode has at most one call in flight (its generator waits for the
answer before the next turn). An environment's ``reset`` and ``step`` may be plain
functions, run on a pool of `concurrency` threads, or coroutines, awaited on the loop.

Every call has a deadline (``step_timeout_s``). A coroutine past it is cancelled and the
caller gets the error. A thread cannot be interrupted, so a plain function past its
deadline leaves a worker stuck: the instance then crashes on purpose, the episodes it
held end with ``environment_error`` on their generators, and the supervisor restarts it
by the role's restart policy. An environment that raises fails that call only.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from protocols.environments import EndEpisode, EpisodeObservation, EpisodeStarted, StartEpisode, StepEpisode
from roles.agents.environments import (
    Action,
    CalculatorEnvironment,
    Environment,
    NumberGuessingGame,
)
from roles.agents.tool_calls import MalformedToolCall, ToolCall
from roles.python_tool import PythonToolEnvironment
from runtime.actor import Actor, handler
from runtime.errors import ActorError

BUILT_IN_ENVIRONMENTS: dict[str, type[Environment]] = {
    "calculator": CalculatorEnvironment, "number_guessing": NumberGuessingGame, "python": PythonToolEnvironment,
}
"""The environments named without an import path."""


class EnvironmentConfig(BaseModel):
    """Which environment the role runs, and how long a call may take."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    environment: str = "calculator"
    """A built-in (``calculator``, ``number_guessing``, ``python``: code in the sandbox) or
    ``package.module:Class`` (a
    subclass of roles.agents.environments.Environment)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the class's constructor, one object per episode."""
    step_timeout_s: float = Field(30.0, gt=0)
    """Deadline of one reset or step; a plain-function environment past it crashes the
    instance (its thread cannot be stopped) and the supervisor restarts it."""
    concurrency: int = Field(8, ge=1)
    """Threads for plain-function environments: calls of this many episodes at once."""
    max_episodes: int = Field(4096, ge=1)
    """Most episodes held at once; one more is refused (a generator that never ends its
    episodes must not grow this process without bound)."""


def environment_class(name: str) -> type[Environment]:
    """The class `name` means: a built-in or ``package.module:Class``."""
    if name in BUILT_IN_ENVIRONMENTS:
        return BUILT_IN_ENVIRONMENTS[name]
    module_name, separator, class_name = name.partition(":")
    if not separator or not module_name or not class_name:
        raise ValueError(f"environment {name!r} is neither a built-in ({sorted(BUILT_IN_ENVIRONMENTS)}) "
                         "nor 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"{name} is not a subclass of roles.agents.environments.Environment")
    return cls


class EnvironmentRole(Actor):
    """Holds episodes by name and answers their turns (see the module docstring)."""

    role = "environment"
    Config: ClassVar[type[BaseModel]] = EnvironmentConfig

    def __init__(self, name: str, config: EnvironmentConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.environment_class = environment_class(config.environment)
        self.episodes: dict[str, Environment] = {}
        self._threads = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="environment")

    async def on_stop(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    @handler(urgent=True)
    async def start_episode(self, request: StartEpisode) -> EpisodeStarted:
        if request.episode in self.episodes:
            raise ActorError(f"episode {request.episode!r} was started already")
        if len(self.episodes) >= self.config.max_episodes:
            raise ActorError(f"{self.name} holds {len(self.episodes)} episodes already (max_episodes); "
                             "end finished ones with env.end")
        episode = self.environment_class(**self.config.args)
        messages = await self._call(episode.reset, dict(request.row))
        self.episodes[request.episode] = episode
        return EpisodeStarted(list(messages), list(episode.tools))

    @handler(urgent=True)
    async def step_episode(self, request: StepEpisode) -> EpisodeObservation:
        episode = self.episodes.get(request.episode)
        if episode is None:
            raise ActorError(f"no episode {request.episode!r} here (never started, ended, or lost in a restart)")
        action = Action(request.text, request.content, [ToolCall(name, arguments) for name, arguments in request.calls],
                        [MalformedToolCall(text, problem) for text, problem in request.malformed], request.turn)
        observation = await self._call(episode.step, action)
        if observation.done:
            self.episodes.pop(request.episode, None)
        info = {key: float(value) for key, value in observation.info.items()}
        return EpisodeObservation(list(observation.messages), float(observation.reward), observation.done, info)

    @handler(urgent=True)
    async def end_episode(self, request: EndEpisode) -> None:
        self.episodes.pop(request.episode, None)

    async def _call(self, function: Any, argument: Any) -> Any:
        """`function(argument)` within the deadline: awaited if a coroutine, else on a thread."""
        timeout = self.config.step_timeout_s
        if inspect.iscoroutinefunction(function):
            try:
                return await asyncio.wait_for(function(argument), timeout)
            except asyncio.TimeoutError:
                raise ActorError(f"{self.environment_class.__name__}.{function.__name__} took over {timeout:g} s") from None
        future = asyncio.get_running_loop().run_in_executor(self._threads, function, argument)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            stalled = TimeoutError(f"{self.environment_class.__name__}.{function.__name__} took over {timeout:g} s "
                                   "on a thread that cannot be stopped: restarting this instance")
            self.start_background(_raise(stalled), "stalled-environment")  # a background failure crashes the actor
            raise ActorError(str(stalled)) from None


async def _raise(error: BaseException) -> None:
    raise error
