"""Shared by the benchmarks that drive role processes themselves (a driver actor in the
benchmark's process, the roles spawned with runtime.spawn): stopping them all."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.actor import Actor
from runtime.spawn import ActorProcess


async def stop_all(driver: Actor, task: asyncio.Task[Any] | None, processes: list[ActorProcess]) -> None:
    """Stop the driver (if it was started as `task`), then every spawned process, the
    newest first (the registry, spawned first, goes last)."""
    if task is not None:
        driver.stop()
        await task
    for process in reversed(processes):
        await process.stop()
