"""Small actors and messages for the component tests (imported by the test
processes and by the actor processes they spawn)."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from protocols.messages import message
from runtime.actor import Actor, handler
from runtime.tracing import current_trace_id


@message("test.echo")
class Echo:  # test -> Echoer
    value: object
    tensor: torch.Tensor | None = None


@message("test.echo_reply")
class EchoReply:  # Echoer -> test
    value: object
    tensor: torch.Tensor | None = None
    trace_id: str | None = None


@message("test.raise_on_ask")
class RaiseOnAsk:  # test -> Echoer: the handler raises ValueError
    text: str


@message("test.raise_on_tell")
class RaiseOnTell:  # test -> Echoer: the handler raises, so the actor crashes
    text: str


@message("test.sleep")
class Sleep:  # test -> Echoer: the handler sleeps on the event loop
    seconds: float


@message("test.block")
class Block:  # test -> Echoer: the handler blocks the compute thread
    seconds: float


@message("test.forward")
class Forward:  # test -> Echoer: ask `target` with Echo(value) and return its reply
    target: str
    value: object


@message("test.work")
class Work:  # producer -> SlowConsumer (tell)
    index: int
    payload: torch.Tensor


@message("test.stats")
class GetStats:  # test -> SlowConsumer
    pass


@message("test.stats_reply")
class Stats:  # SlowConsumer -> test
    handled: list[int]
    max_queued: int
    max_rss_kb: int


class Echoer(Actor):
    """Answers echoes; fails, sleeps, blocks or forwards on request."""

    role = "echo"

    @handler
    async def echo(self, request: Echo) -> EchoReply:
        return EchoReply(request.value, request.tensor, current_trace_id.get())

    @handler
    async def raise_on_ask(self, request: RaiseOnAsk) -> None:
        raise ValueError(request.text)

    @handler
    async def raise_on_tell(self, request: RaiseOnTell) -> None:
        raise RuntimeError(request.text)

    @handler
    async def sleep(self, request: Sleep) -> EchoReply:
        await asyncio.sleep(request.seconds)
        return EchoReply(request.seconds)

    @handler
    async def block(self, request: Block) -> EchoReply:
        await self.compute.run(time.sleep, request.seconds)
        return EchoReply(request.seconds)

    @handler
    async def forward(self, request: Forward) -> EchoReply:
        return await self.ask(request.target, Echo(request.value))


class SlowConsumer(Actor):
    """Handles each Work tell slowly and remembers what it saw."""

    role = "consumer"

    def __init__(self, name: str, delay_s: float = 0.05, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.delay_s = delay_s
        self.handled: list[int] = []
        self.max_queued = 0

    @handler
    async def work(self, item: Work) -> None:
        assert self._inbox is not None
        self.max_queued = max(self.max_queued, self._inbox.mailbox.qsize() + 1)
        await asyncio.sleep(self.delay_s)
        self.handled.append(item.index)

    @handler
    async def stats(self, request: GetStats) -> Stats:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return Stats(self.handled, self.max_queued, rss)


def pid() -> int:
    return os.getpid()


class FailsToStart(Actor):
    """Its on_start raises: the process must exit 1 without serving."""

    role = "broken"

    async def on_start(self) -> None:
        raise RuntimeError("cannot reach the model directory")


@message("test.tally")
class Tally:  # test -> Tallier: count one more for `key`
    key: str


@message("test.tallies_query")
class TalliesQuery:  # test -> Tallier
    pass


@message("test.tallies")
class Tallies:  # Tallier -> test
    counts: dict[str, int]
    pid: int


class Tallier(Actor):
    """Counts how often each key reached its handler (to see work done twice)."""

    role = "tally"

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.counts: dict[str, int] = {}

    @handler
    async def tally(self, request: Tally) -> Tallies:
        self.counts[request.key] = self.counts.get(request.key, 0) + 1
        return Tallies(dict(self.counts), os.getpid())

    @handler
    async def tallies(self, request: TalliesQuery) -> Tallies:
        return Tallies(dict(self.counts), os.getpid())


@message("test.relay")
class Relay:  # test -> Relayer: tally `key` at `target`, after `delay_s`
    target: str
    key: str
    delay_s: float = 0.0


class Relayer(Actor):
    """Handles Relay by telling a Tallier, so re-handling shows up downstream."""

    role = "relay"

    @handler
    async def relay(self, request: Relay) -> Tallies:
        reply = await self.ask(request.target, Tally(request.key))
        await asyncio.sleep(request.delay_s)
        return reply


class NeedsSettingsConfig(BaseModel):
    """A config block with a required field (for topology validation tests)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    batch_size: int = 8


class NeedsSettings(Actor):
    """An actor whose role config has a required field."""

    role = "needs"
    Config: ClassVar[type[BaseModel]] = NeedsSettingsConfig

    def __init__(self, name: str, config: NeedsSettingsConfig, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.config = config
