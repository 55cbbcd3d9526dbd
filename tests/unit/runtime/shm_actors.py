"""Actors and helpers for the shared-memory tests (imported by the spawned processes too).

`Keeper` holds what it is sent, echoes, and reports what its shared memory holds;
`Pitcher` sends tensors to another actor when asked (so a test can kill a sender);
`Driver` is the plain actor a test sends from. `troupe_segments` lists what a
process left in /dev/shm.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import torch

from protocols.messages import message
from runtime.actor import Actor, handler
from runtime.settings import RuntimeSettings
from runtime.shm.segments import SHM_DIR
from runtime.spawn import ActorProcess, spawn_actor

MB = 1 << 20
FAST_STOP = {"log_messages": False, "stop_linger_s": 0.2, "stop_grace_s": 1.0}
"""Settings for test actors: no log files, and a short wait for lent segments at stop."""


@message("test_shm.keep")
class Keep:  # test -> Keeper: hold `value` under `key`
    key: str
    value: Any


@message("test_shm.drop")
class Drop:  # test -> Keeper: let go of what `key` holds
    key: str


@message("test_shm.echo")
class Echo:  # test -> Keeper: send `value` back
    value: Any


@message("test_shm.echoed")
class Echoed:  # Keeper -> test
    value: Any


@message("test_shm.checksum")
class Checksum:  # test -> Keeper: the bytes of what `key` holds, summed
    key: str


@message("test_shm.sum")
class Sum:  # Keeper -> test
    total: int


@message("test_shm.report")
class Report:  # test -> Keeper / Pitcher: what does your shared memory hold?
    pass


@message("test_shm.holdings")
class Holdings:  # Keeper / Pitcher -> test
    pid: int
    loans: dict[int, str]
    """lease -> segment this actor lent and has not had back."""
    created: int
    """Segments this actor created so far."""
    mapped: list[str]
    """Segments of others this actor has mapped (cached)."""


@message("test_shm.pitch")
class Pitch:  # test -> Pitcher: ask `target` to keep `count` tensors of `nbytes` bytes (filled with their index)
    target: str
    count: int
    nbytes: int


def filled(value: int, nbytes: int = 2 * MB) -> torch.Tensor:
    """`nbytes` bytes, each `value` (so a checksum tells what a tensor holds)."""
    return torch.full((nbytes,), value, dtype=torch.uint8)


def byte_sum(value: torch.Tensor) -> int:
    return int(value.contiguous().view(torch.uint8).sum(dtype=torch.int64))


def holdings_of(actor: Actor) -> Holdings:
    shared = actor.shared_memory
    assert shared is not None and shared.lender is not None and shared.borrower is not None
    return Holdings(os.getpid(), shared.lender.loans, shared.lender.created, shared.borrower.mapped)


class Keeper(Actor):
    """Keeps tensors it is sent, echoes, and reports its shared memory."""

    role = "keeper"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.kept: dict[str, Any] = {}

    @handler
    async def keep(self, request: Keep) -> None:
        self.kept[request.key] = request.value

    @handler
    async def drop(self, request: Drop) -> None:
        self.kept.pop(request.key, None)

    @handler
    async def echo(self, request: Echo) -> Echoed:
        return Echoed(request.value)

    @handler
    async def checksum(self, request: Checksum) -> Sum:
        return Sum(byte_sum(self.kept[request.key]))

    @handler
    async def report(self, request: Report) -> Holdings:
        return holdings_of(self)


class Pitcher(Actor):
    """Sends tensors to another actor when asked."""

    role = "pitcher"

    @handler
    async def pitch(self, request: Pitch) -> None:
        for index in range(request.count):
            value = filled(index % 256, request.nbytes)
            await self.ask(request.target, Keep(f"pitched-{index}", value))

    @handler
    async def report(self, request: Report) -> Holdings:
        return holdings_of(self)


class Driver(Actor):
    """An actor that only sends (the test's side)."""

    role = "driver"


def troupe_segments(pid: int | None = None) -> list[str]:
    """The troupe segments in /dev/shm (of process `pid`, when given)."""
    names = [name for name in os.listdir(SHM_DIR) if name.startswith("troupe.")]
    return sorted(name for name in names if pid is None or name.split(".")[2] == str(pid))


async def spawn_keeper(name: str, **settings: Any) -> ActorProcess:
    return await spawn_actor("tests.unit.runtime.shm_actors:Keeper", name, settings=RuntimeSettings(**{**FAST_STOP, **settings}))


async def eventually(condition: Any, timeout: float = 5.0, what: str = "the condition") -> None:
    """Wait until `condition()` is true (releases travel asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
