"""The registry: registration, lookup, heartbeats with a deadline, membership events."""

from __future__ import annotations

import asyncio
import time

import pytest

from protocols.membership import MembershipEvent
from runtime.actor import Actor
from runtime.client import Client
from runtime.errors import ActorDeadError
from runtime.settings import RuntimeSettings
from tests.component.actors import Echo

FAST = RuntimeSettings(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0)


class Watcher(Actor):
    """Records membership events as they arrive."""

    role = "watcher"

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.events: list[MembershipEvent] = []
        self.changed = asyncio.Event()

    async def on_membership(self, event: MembershipEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, event: str, name: str, timeout: float = 10.0) -> MembershipEvent:
        deadline = time.monotonic() + timeout
        while True:
            for seen in self.events:
                if seen.event == event and seen.record.name == name:
                    return seen
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {event} event for {name}; saw {[(e.event, e.record.name) for e in self.events]}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


@pytest.fixture
async def registry(spawn):
    return await spawn("runtime.registry:Registry", "registry", settings=FAST)


async def test_watchers_see_actors_join_get_ready_and_leave(registry, spawn, run_here):
    watcher = Watcher("watcher-0", settings=FAST)
    await run_here(watcher, registry=registry.endpoint)
    assert [record.name for record in await watcher.watch_membership()] == ["watcher-0"]

    echo = await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    joined = await watcher.wait_for("joined", "echo-0")
    assert joined.record.role == "echo" and joined.record.pid == echo.pid
    assert joined.record.endpoint == echo.endpoint
    ready = await watcher.wait_for("updated", "echo-0")
    assert ready.record.state == "ready"

    await echo.stop()
    left = await watcher.wait_for("left", "echo-0")
    assert left.reason == "deregistered"
    assert left.epoch > joined.epoch


async def test_an_actor_that_stops_heartbeating_is_declared_left(registry, spawn, run_here):
    watcher = Watcher("watcher-0", settings=FAST)
    await run_here(watcher, registry=registry.endpoint)
    await watcher.watch_membership()
    echo = await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    await watcher.wait_for("joined", "echo-0")
    echo.kill()
    killed_at = time.monotonic()
    left = await watcher.wait_for("left", "echo-0", timeout=FAST.heartbeat_timeout_s + 3)
    assert left.reason == "heartbeat-timeout"
    assert time.monotonic() - killed_at >= FAST.heartbeat_timeout_s * 0.5
    assert not await watcher.lookup(name="echo-0")


async def test_a_busy_actor_keeps_heartbeating_while_its_compute_thread_blocks(registry, spawn, run_here):
    from tests.component.actors import Block

    watcher = Watcher("watcher-0", settings=FAST)
    await run_here(watcher, registry=registry.endpoint)
    await watcher.watch_membership()
    await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    await watcher.wait_for("joined", "echo-0")
    await watcher.ask("echo-0", Block(3 * FAST.heartbeat_timeout_s), timeout=30)
    assert not [e for e in watcher.events if e.event == "left"], "the blocked actor was declared dead"


async def test_actors_resolve_each_other_by_name_and_role(registry, spawn, run_here):
    for index in range(2):
        await spawn("tests.component.actors:Echoer", f"echo-{index}", instance=index,
                    registry=registry.endpoint, settings=FAST)
    caller = Watcher("caller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    echoes = await caller.lookup(role="echo")
    assert sorted((r.name, r.instance) for r in echoes) == [("echo-0", 0), ("echo-1", 1)]
    assert (await caller.ask("echo-1", Echo("by name"))).value == "by name"
    with pytest.raises(ActorDeadError, match="no actor named 'echo-7'"):
        await caller.ask("echo-7", Echo("nobody"))
    async with Client("cli", registry=registry.endpoint, settings=FAST) as client:
        assert (await client.ask("echo-0", Echo("from a client"))).value == "from a client"


async def test_asks_pending_on_an_actor_that_left_fail_with_actor_dead(registry, spawn, run_here):
    from tests.component.actors import Sleep

    caller = Watcher("caller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    await caller.watch_membership()
    echo = await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    await caller.wait_for("joined", "echo-0")
    pending = asyncio.create_task(caller.ask("echo-0", Sleep(30), timeout=60))
    await asyncio.sleep(0.3)
    async with Client("cli", settings=FAST) as client:
        from protocols.membership import Deregister

        # The actor is still alive but the registry says it left: its asks fail now.
        await client.ask(registry.endpoint, Deregister("echo-0", echo.endpoint))
    with pytest.raises(ActorDeadError, match="left the registry"):
        await asyncio.wait_for(pending, 5)
    echo.kill()  # it is still sleeping on our behalf
