"""Faults that once broke the runtime: each test pins one down."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
import zmq

from protocols.envelope import Envelope, encode_envelope, new_id
from protocols.membership import MembershipEvent
from runtime.actor import ActorCrashed
from runtime.client import Client
from runtime.errors import ActorDeadError
from runtime.settings import RuntimeSettings
from tests.component.actors import Echo, GetStats, RaiseOnTell, Sleep, Work
from tests.component.test_registry import FAST, Watcher

ECHOER = "tests.component.actors:Echoer"
CONSUMER = "tests.component.actors:SlowConsumer"


async def test_a_peer_that_never_reads_its_replies_does_not_hold_up_anyone_else(spawn):
    echo = await spawn(ECHOER, "echo-0")
    flooder = zmq.Context.instance().socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.RCVHWM, 10)
    flooder.connect(echo.endpoint)
    try:
        from protocols.control import Ping

        ping, _ = encode_envelope(Envelope(kind=Ping.KIND, message_id=new_id(), sender="flooder", sent_at=time.time(),
                                           payload={}, expects_reply=True))
        for _ in range(3000):  # far more replies than ZeroMQ will queue for one peer
            flooder.send_multipart(ping)
        await asyncio.sleep(1.0)
        async with Client("polite") as client:
            assert (await client.ask(echo.endpoint, Echo("through"), timeout=5)).value == "through"
    finally:
        flooder.close(linger=0)
    async with Client("after") as client:
        assert (await client.ask(echo.endpoint, Echo("still"), timeout=5)).value == "still"


async def test_tells_whose_credit_wait_was_short_are_still_handled_after_a_long_handler(spawn):
    consumer = await spawn(CONSUMER, "consumer-0", options={"delay_s": 0.4})
    async with Client("producer") as client:
        for index in range(3):
            await client.tell(consumer.endpoint, Work(index, torch.zeros(1)), timeout=0.2)
        stats = await client.ask(consumer.endpoint, GetStats(), timeout=10)
    assert stats.handled == [0, 1, 2]


async def test_credit_for_tells_comes_back_when_an_ask_empties_the_mailbox(spawn):
    settings = RuntimeSettings(window_messages=2)
    consumer = await spawn(CONSUMER, "consumer-0", options={"delay_s": 0.2}, settings=settings)
    async with Client("teller", settings=settings) as teller, Client("asker", settings=settings) as asker:
        await teller.tell(consumer.endpoint, Work(0, torch.zeros(1)))
        await teller.tell(consumer.endpoint, Work(1, torch.zeros(1)))
        await asker.ask(consumer.endpoint, GetStats(), timeout=10)  # handled last: it empties the mailbox
        await asyncio.sleep(0.2)
        await teller.tell(consumer.endpoint, Work(2, torch.zeros(1)), timeout=1.0)
        stats = await asker.ask(consumer.endpoint, GetStats(), timeout=10)
    assert stats.handled == [0, 1, 2]


async def test_tells_the_receiver_cannot_decode_give_their_credit_back(spawn):
    receiver_settings = RuntimeSettings(max_message_bytes=1 << 20, window_messages=2)
    consumer = await spawn(CONSUMER, "consumer-0", options={"delay_s": 0.0}, settings=receiver_settings)
    sender_settings = RuntimeSettings(max_message_bytes=1 << 30, window_messages=2)
    half = torch.zeros(600_000, dtype=torch.uint8)  # each frame fits, the message does not
    async with Client("sender", settings=sender_settings) as client:
        from tests.component.actors import Echo as EchoMessage

        for _ in range(4):
            await client.tell(consumer.endpoint, EchoMessage({"a": half, "b": half}), timeout=2.0)
        await client.tell(consumer.endpoint, Work(7, torch.zeros(1)), timeout=2.0)
        stats = await client.ask(consumer.endpoint, GetStats(), timeout=5)
    assert stats.handled == [7]


async def test_asks_queued_behind_a_failing_tell_get_actor_dead_not_answers(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        blocker = asyncio.create_task(client.ask(echo.endpoint, Sleep(0.5), timeout=10))
        await asyncio.sleep(0.1)
        await client.tell(echo.endpoint, RaiseOnTell("state is now corrupt"))
        queued = [asyncio.create_task(client.ask(echo.endpoint, Echo(i), timeout=10)) for i in range(5)]
        results = await asyncio.gather(blocker, *queued, return_exceptions=True)
    assert results[0].value == 0.5
    assert all(isinstance(result, ActorDeadError) for result in results[1:]), results
    assert await echo.wait(10) == 1


async def test_an_actor_whose_on_start_fails_exits_with_code_one(spawn):
    from runtime.spawn import SpawnError

    with pytest.raises(SpawnError, match="exited with code 1"):
        await spawn("tests.component.actors:FailsToStart", "broken-0")


async def test_an_actor_whose_on_start_fails_raises_actor_crashed_in_process():
    from tests.component.actors import FailsToStart

    with pytest.raises(ActorCrashed, match="cannot reach the model directory"):
        await FailsToStart("broken-0").run()


async def test_a_restarted_actor_is_found_by_name_at_its_new_endpoint(spawn):
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    first = await spawn(ECHOER, "echo-0", registry=registry.endpoint, settings=FAST)
    async with Client("caller", registry=registry.endpoint, settings=FAST) as client:
        assert (await client.ask("echo-0", Echo(1))).value == 1
        first.kill()
        await first.wait(5)
        second = await spawn(ECHOER, "echo-0", registry=registry.endpoint, settings=FAST)
        await asyncio.sleep(0.3)
        assert second.endpoint != first.endpoint
        assert (await client.ask("echo-0", Echo(2), timeout=5)).value == 2


async def test_a_second_process_under_the_same_name_supersedes_the_first(spawn, run_here):
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    watcher = Watcher("watcher-0", settings=FAST)
    await run_here(watcher, registry=registry.endpoint)
    await watcher.watch_membership()
    old = await spawn(ECHOER, "echo-0", registry=registry.endpoint, settings=FAST)
    new = await spawn(ECHOER, "echo-0", registry=registry.endpoint, settings=FAST)
    replaced = await watcher.wait_for("left", "echo-0")
    assert replaced.reason == "replaced" and replaced.record.endpoint == old.endpoint
    assert await old.wait(10) == 1, "the superseded process stops"
    (record,) = await watcher.lookup(name="echo-0")
    assert record.endpoint == new.endpoint
    assert (await watcher.ask("echo-0", Echo("new"))).value == "new"


async def test_an_actor_that_was_expired_registers_and_watches_again(spawn, run_here):
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    watcher = Watcher("watcher-0", settings=FAST)
    await run_here(watcher, registry=registry.endpoint)
    await watcher.watch_membership()
    time.sleep(FAST.heartbeat_timeout_s + 1.0)  # stall this whole event loop: the registry expires us
    await asyncio.sleep(3 * FAST.heartbeat_interval_s)  # heartbeats resume, get known=False, register again
    (record,) = await watcher.lookup(name="watcher-0")
    assert record.endpoint == watcher.endpoint
    await spawn(ECHOER, "echo-0", registry=registry.endpoint, settings=FAST)
    joined = await watcher.wait_for("joined", "echo-0")
    assert isinstance(joined, MembershipEvent)


async def test_a_send_waiting_for_credit_fails_at_once_when_its_target_leaves(spawn, run_here):
    from protocols.membership import Deregister

    settings = FAST.model_copy(update={"window_messages": 1})
    registry = await spawn("runtime.registry:Registry", "registry", settings=settings)
    sender = Watcher("sender-0", settings=settings)
    await run_here(sender, registry=registry.endpoint)
    await sender.watch_membership()
    consumer = await spawn(CONSUMER, "consumer-0", options={"delay_s": 5.0}, registry=registry.endpoint,
                           settings=settings)
    await sender.wait_for("joined", "consumer-0")
    await sender.tell("consumer-0", Work(0, torch.zeros(1)))
    waiting = asyncio.create_task(sender.tell("consumer-0", Work(1, torch.zeros(1)), timeout=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    await sender.ask(registry.endpoint, Deregister("consumer-0", consumer.endpoint))
    with pytest.raises(ActorDeadError, match="left the registry"):
        await waiting
    assert time.monotonic() - started < 2.0
    consumer.kill()


async def test_a_client_writes_its_log_while_it_runs(spawn, tmp_path):
    import json

    echo = await spawn(ECHOER, "echo-0")
    async with Client("driver", run_dir=tmp_path) as client:
        for index in range(5):
            await client.ask(echo.endpoint, Echo(index))
        await asyncio.sleep(0.5)
        lines = (tmp_path / "logs" / "driver.jsonl").read_text().splitlines()
        assert len([json.loads(line) for line in lines if '"send"' in line]) == 5


