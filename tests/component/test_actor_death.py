"""What callers see when an actor stops, crashes or is killed."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.client import Client
from runtime.errors import ActorDeadError
from tests.component.actors import Echo, RaiseOnTell, Sleep

ECHOER = "tests.component.actors:Echoer"


async def test_pending_ask_to_a_killed_actor_fails_promptly_with_actor_dead(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        pending = asyncio.create_task(client.ask(echo.endpoint, Sleep(30.0), timeout=60))
        await asyncio.sleep(0.3)
        echo.kill()
        started = time.monotonic()
        with pytest.raises(ActorDeadError, match="disconnected"):
            await pending
    assert time.monotonic() - started < 2.0
    assert await echo.wait(5) == -9


async def test_messages_left_in_queue_after_actor_stops_receive_an_error(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        in_progress = asyncio.create_task(client.ask(echo.endpoint, Sleep(1.0), timeout=30))
        await asyncio.sleep(0.2)
        queued = [asyncio.create_task(client.ask(echo.endpoint, Echo(i), timeout=30)) for i in range(5)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        stopping = asyncio.create_task(echo.stop())
        results = await asyncio.gather(in_progress, *queued, return_exceptions=True)
        assert await stopping == 0
    # The handler that was running finishes and replies; everything queued is refused.
    assert not isinstance(results[0], BaseException), repr(results[0])
    assert results[0].value == 1.0
    assert all(isinstance(result, ActorDeadError) for result in results[1:]), results
    assert all("stopped" in str(result) for result in results[1:])
    assert time.monotonic() - started < 5.0


async def test_a_failed_tell_crashes_the_actor_and_its_process_exits_nonzero(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        await client.tell(echo.endpoint, RaiseOnTell("corrupt state"))
        assert await echo.wait(10) == 1
        await asyncio.sleep(0.2)  # let the disconnect be noticed
        started = time.monotonic()
        with pytest.raises(ActorDeadError, match="disconnected"):
            await client.ask(echo.endpoint, Echo(1), timeout=10.0)
        assert time.monotonic() - started < 1.0
