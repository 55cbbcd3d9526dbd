"""ask and tell between actors in separate OS processes, over tcp and ipc."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from protocols.control import Ping, Pong
from runtime.client import Client
from runtime.errors import DeadlineExceeded, RemoteError
from tests.component.actors import Block, Echo, EchoReply, GetStats, RaiseOnAsk, Sleep, Work

ECHOER = "tests.component.actors:Echoer"


@pytest.fixture(params=["tcp", "ipc"])
def bind(request, tmp_path) -> str:
    return "tcp://127.0.0.1:*" if request.param == "tcp" else f"ipc://{tmp_path}/echo.ipc"


async def test_ask_returns_the_reply_from_another_process(spawn, bind):
    echo = await spawn(ECHOER, "echo-0", bind=bind)
    assert echo.endpoint.startswith(bind.split("://")[0])
    async with Client("test") as client:
        reply = await client.ask(echo.endpoint, Echo({"nested": [1, 2.5, "three", None, b"4"]}))
    assert isinstance(reply, EchoReply)
    assert reply.value == {"nested": [1, 2.5, "three", None, b"4"]}


async def test_tensors_of_every_common_dtype_cross_processes_intact(spawn, bind):
    echo = await spawn(ECHOER, "echo-0", bind=bind)
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f32_transposed": torch.randn(4, 6).t(),
        "i64_empty": torch.empty(0, 3, dtype=torch.int64),
        "bool_0d": torch.tensor(True),
        "big": torch.randn(2_000_000),
    }
    async with Client("test") as client:
        for name, tensor in tensors.items():
            reply = await client.ask(echo.endpoint, Echo(name, tensor))
            assert reply.tensor.dtype == tensor.dtype, name
            assert reply.tensor.shape == tensor.shape, name
            assert torch.equal(reply.tensor, tensor), name


async def test_told_messages_are_handled_in_order(spawn):
    echo = await spawn("tests.component.actors:SlowConsumer", "consumer-0", options={"delay_s": 0.0})
    async with Client("test") as client:
        for index in range(50):
            await client.tell(echo.endpoint, Work(index, torch.zeros(3)))
        stats = await client.ask(echo.endpoint, GetStats())
    assert stats.handled == list(range(50))


async def test_ask_past_its_deadline_raises_and_the_actor_keeps_serving(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no reply within 0.3 s"):
            await client.ask(echo.endpoint, Sleep(2.0), timeout=0.3)
        assert time.monotonic() - started < 1.5
        # The actor still serves (after finishing the sleep it was given).
        reply = await client.ask(echo.endpoint, Echo("still here"), timeout=10)
    assert reply.value == "still here"


async def test_failed_ask_returns_a_remote_error_with_the_remote_traceback(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        with pytest.raises(RemoteError) as caught:
            await client.ask(echo.endpoint, RaiseOnAsk("the input was bad"))
        assert (await client.ask(echo.endpoint, Echo(1))).value == 1
    error = caught.value
    assert error.error_type == "ValueError"
    assert error.remote_message == "the input was bad"
    assert "raise_on_ask" in error.remote_traceback
    assert "tests/component/actors.py" in error.remote_traceback
    assert "remote traceback" in str(error)


async def test_blocking_compute_leaves_the_event_loop_free_for_pings(spawn):
    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        blocked = asyncio.create_task(client.ask(echo.endpoint, Block(2.0)))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        pong = await client.ask(echo.endpoint, Ping(), timeout=1.0)
        ping_s = time.monotonic() - started
        assert not blocked.done(), "the blocking call should still be running"
        await blocked
    assert isinstance(pong, Pong) and pong.pid == echo.pid
    assert ping_s < 0.5
