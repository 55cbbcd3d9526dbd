"""Component-test fixtures: real sockets and real processes, and leak checks.

Every test here runs with two autouse checks: no runtime socket may stay open
and no child process may outlive the test. A leak fails the test (after the
leaked process is killed, so one failure does not cascade).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psutil
import pytest

from runtime import transport
from runtime.actor import Actor
from runtime.spawn import ActorProcess, spawn_actor


@pytest.fixture(autouse=True)
def no_leaked_sockets() -> Any:
    before = set(transport.open_sockets())
    yield
    leaked = [label for label in transport.open_sockets() if label not in before]
    assert not leaked, f"the test left runtime sockets open: {leaked}"


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Any:
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    yield
    leaked = [c for c in me.children(recursive=True) if c.pid not in before and c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for child in leaked:
        child.kill()
    assert not leaked, f"the test left child processes running: {[(c.pid, c.cmdline()[-6:]) for c in leaked]}"


@pytest.fixture
async def spawn(tmp_path: Any) -> AsyncIterator[Callable[..., Awaitable[ActorProcess]]]:
    """Start actor processes (``spawn(actor, name, **kwargs)``); all are stopped at teardown."""
    started: list[ActorProcess] = []

    async def start(actor: str, name: str, **kwargs: Any) -> ActorProcess:
        kwargs.setdefault("run_dir", tmp_path)
        process = await spawn_actor(actor, name, **kwargs)
        started.append(process)
        return process

    yield start
    await asyncio.gather(*(process.stop(timeout=10) for process in started))


class Running:
    """An actor running in this test's event loop (for the side of a test that needs a mailbox)."""

    def __init__(self, actor: Actor, task: asyncio.Task[None]) -> None:
        self.actor = actor
        self.task = task

    async def stop(self) -> None:
        self.actor.stop()
        await self.task


@pytest.fixture
async def run_here() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Run actors in this process (``await run_here(actor, **run_kwargs)``); stopped at teardown."""
    running: list[Running] = []

    async def start(actor: Actor, **kwargs: Any) -> Running:
        ready = asyncio.Event()
        task = asyncio.create_task(actor.run(on_ready=lambda _: ready.set(), **kwargs))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()  # raises the reason it did not start
        assert waiter in done, f"{actor.name} did not start within 30 s"
        handle = Running(actor, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
