"""`@handler(urgent=True)`: handled beside a running handler, not after it."""

from __future__ import annotations

import asyncio
import time

import pytest

from protocols.messages import message
from runtime.actor import Actor, handler
from runtime.errors import RemoteError


@message("test.urgent.long")
class Long:  # test -> Juggler: holds the ordinary handler slot until released
    pass


@message("test.urgent.poke")
class Poke:  # test -> Juggler (urgent)
    fail: bool = False


@message("test.urgent.release")
class Release:  # test -> Juggler (ordinary: queued behind Long)
    pass


class Juggler(Actor):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.released = asyncio.Event()
        self.order: list[str] = []

    @handler
    async def long(self, request: Long) -> None:
        self.order.append("long-start")
        await self.released.wait()
        self.order.append("long-end")

    @handler(urgent=True)
    async def poke(self, request: Poke) -> None:
        if request.fail:
            raise ValueError("poked wrong")
        self.order.append("poke")
        self.released.set()

    @handler
    async def release(self, request: Release) -> None:
        self.order.append("release")


async def test_an_urgent_message_is_handled_while_a_long_handler_runs(run_here) -> None:
    juggler = Juggler("juggler")
    await run_here(juggler)
    caller = Actor("caller")
    await run_here(caller)
    long = asyncio.create_task(caller.ask(juggler.endpoint, Long(), timeout=10))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(caller.ask(juggler.endpoint, Release(), timeout=10))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await caller.ask(juggler.endpoint, Poke(), timeout=5)  # would wait forever behind Long if it queued
    assert time.monotonic() - started < 2
    await asyncio.wait_for(asyncio.gather(long, queued), 10)
    assert juggler.order == ["long-start", "poke", "long-end", "release"]


async def test_an_urgent_handler_that_raises_answers_the_asker_and_the_actor_goes_on(run_here) -> None:
    juggler = Juggler("juggler")
    await run_here(juggler)
    caller = Actor("caller")
    await run_here(caller)
    with pytest.raises(RemoteError, match="poked wrong"):
        await caller.ask(juggler.endpoint, Poke(fail=True), timeout=5)
    await caller.ask(juggler.endpoint, Poke(), timeout=5)
    assert juggler.order == ["poke"]


def test_urgent_kinds_are_collected_per_class() -> None:
    assert Juggler._urgent == frozenset({Poke.KIND})
    assert Actor._urgent == frozenset()
