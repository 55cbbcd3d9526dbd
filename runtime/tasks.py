"""`TaskSet`: the tasks one owner started, none of which outlives it.

Every asyncio task in the runtime belongs to an owner that cancels and awaits it
when the owner stops (an actor's background work, a client's log flushing, the
packing of one publication): no task is ever left running unobserved. A task that
finishes is forgotten at once, so a long-lived set does not grow.

It is an owned set rather than an ``asyncio.TaskGroup`` because its owners need
two things a TaskGroup does not give: a failed task must not cancel its siblings
(an actor decides, through `on_error`, to crash and shut down in order), and an
exception leaving the owner's block must stay the exception it was, not an
``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any


class TaskSet:
    """Tasks started with `start`, cancelled and awaited by `close` (or on leaving ``async with``).

    Args:
        on_error: called with the exception of a task that fails (not one that is
            cancelled) as soon as it fails. Without it, `close` raises the first
            such exception: errors reach the owner either way.
    """

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.on_error = on_error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures: list[BaseException] = []

    def start(self, coroutine: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coroutine` as a task of this set."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self.on_error is not None:
            self.on_error(task.exception())  # type: ignore[arg-type]
        else:
            self._failures.append(task.exception())  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def close(self, raise_failure: bool = True) -> None:
        """Cancel every task still running and wait until all of them have finished.

        Then, without `on_error`, raise the exception of the first task that failed
        (unless `raise_failure` is False: the owner is already raising its own).
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each failure was recorded by _finished
        failures, self._failures = self._failures, []
        if failures and raise_failure:
            raise failures[0]

    async def __aenter__(self) -> TaskSet:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: Any) -> None:
        await self.close(raise_failure=exc_type is None)
