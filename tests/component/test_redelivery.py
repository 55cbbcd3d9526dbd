"""Idempotent handlers, derived message ids, and work re-delivered when an instance dies."""

from __future__ import annotations

import asyncio
import time

import pytest

from protocols.envelope import new_id
from runtime.client import Client
from runtime.errors import DeadlineExceeded
from tests.component.actors import Echo, Relay, TalliesQuery, Tally
from tests.component.test_registry import FAST, Watcher


async def test_a_repeated_ask_is_answered_from_memory_not_handled_again(spawn):
    tallier = await spawn("tests.component.actors:Tallier", "tally-0")
    async with Client("test") as client:
        message_id = new_id()
        first = await client.ask(tallier.endpoint, Tally("a"), message_id=message_id)
        again = await client.ask(tallier.endpoint, Tally("a"), message_id=message_id)
        other = await client.ask(tallier.endpoint, Tally("a"))
    assert first.counts == again.counts == {"a": 1}, "the repeat got the remembered reply"
    assert other.counts == {"a": 2}


async def test_re_handling_a_message_elsewhere_sends_downstream_messages_with_the_same_ids(spawn):
    tallier = await spawn("tests.component.actors:Tallier", "tally-0")
    front_a = await spawn("tests.component.actors:Relayer", "relay-0")
    front_b = await spawn("tests.component.actors:Relayer", "relay-1")
    async with Client("test") as client:
        message_id = new_id()
        # The same message handled by two different relays (as after a re-delivery)...
        await client.ask(front_a.endpoint, Relay(tallier.endpoint, "item-7"), message_id=message_id)
        await client.ask(front_b.endpoint, Relay(tallier.endpoint, "item-7"), message_id=message_id)
        counts = (await client.ask(tallier.endpoint, TalliesQuery())).counts
    # ...reaches the tallier twice with one derived id, and is counted once.
    assert counts == {"item-7": 1}


async def test_work_for_a_role_is_redelivered_to_a_live_instance_when_its_instance_dies(spawn, run_here):
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    tallier = await spawn("tests.component.actors:Tallier", "tally-0", registry=registry.endpoint, settings=FAST)
    relays = [
        await spawn("tests.component.actors:Relayer", f"relay-{i}", instance=i, registry=registry.endpoint, settings=FAST)
        for i in range(2)
    ]
    caller = Watcher("caller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    members = await caller.watch_membership()
    assert sorted(r.name for r in members if r.role == "relay" and r.state == "ready") == ["relay-0", "relay-1"]
    # relay-0 gets the work (nothing in flight or sent to either yet, then by name); it tallies, then dies.
    work = asyncio.create_task(caller.ask_role("relay", Relay("tally-0", "item-1", delay_s=2.0), timeout=30))
    await asyncio.sleep(1.0)
    relays[0].kill()
    reply = await work
    assert reply.counts == {"item-1": 1}, "re-delivered, and the tally was not counted twice"
    assert caller._router.redeliveries == 1
    assert (await caller.ask(tallier.endpoint, TalliesQuery())).counts == {"item-1": 1}


async def test_work_for_a_role_waits_for_an_instance_to_join(spawn, run_here):
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    caller = Watcher("caller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    waiting = asyncio.create_task(caller.ask_role("echo", Echo("late"), timeout=30))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    assert (await waiting).value == "late"
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="no live instance of role 'nobody'"):
        await caller.ask_role("nobody", Echo("x"), timeout=0.5)
    assert time.monotonic() - started < 2.0


async def test_concurrent_first_asks_to_a_role_all_find_its_instances(spawn, run_here):
    # Regression: asks racing the first membership snapshot waited for a change that never came.
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    await spawn("tests.component.actors:Echoer", "echo-0", registry=registry.endpoint, settings=FAST)
    caller = Watcher("caller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    started = time.monotonic()
    replies = await asyncio.gather(*(caller.ask_role("echo", Echo(i), timeout=10) for i in range(8)))
    assert [reply.value for reply in replies] == list(range(8))
    assert time.monotonic() - started < 3.0
