"""Connections come and go without wearing out the process's ZeroMQ machinery."""

from __future__ import annotations

import asyncio

import zmq

from runtime.client import Client
from tests.component.actors import Echo, Sleep

ECHOER = "tests.component.actors:Echoer"


def fresh_connection_works(timeout_ms: int = 3000) -> bool:
    """A brand-new DEALER/ROUTER pair in this process can still connect and exchange a message."""
    context = zmq.Context.instance()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        return router.poll(timeout_ms) != 0
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


async def test_many_short_lived_clients_leave_the_process_able_to_connect(spawn):
    echo = await spawn(ECHOER, "echo-0")
    for index in range(50):
        async with Client(f"client-{index}") as client:
            assert (await client.ask(echo.endpoint, Echo(index))).value == index
    assert fresh_connection_works()


async def test_links_to_killed_actors_are_torn_down_without_stalling_the_process(spawn):
    for index in range(3):
        echo = await spawn(ECHOER, f"echo-{index}")
        async with Client("client") as client:
            pending = asyncio.create_task(client.ask(echo.endpoint, Sleep(30), timeout=60))
            await asyncio.sleep(0.1)
            echo.kill()
            try:
                await pending
            except Exception:  # the ActorDeadError is what a killed peer gives; covered elsewhere
                pass
        await echo.wait(5)
    assert fresh_connection_works()

