"""TaskSet: no task outlives its owner, and no task's failure goes unseen."""

from __future__ import annotations

import asyncio

import pytest

from runtime.tasks import TaskSet


async def test_closing_cancels_the_tasks_still_running_and_waits_for_them():
    tasks = TaskSet()
    cleaned_up = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned_up.append(True)

    running = tasks.start(forever(), "forever")
    await asyncio.sleep(0)
    await tasks.close()

    assert running.cancelled() and cleaned_up == [True] and len(tasks) == 0


async def test_a_finished_task_is_forgotten_at_once():
    tasks = TaskSet()
    done = tasks.start(asyncio.sleep(0, result=3), "quick")

    assert await done == 3
    assert len(tasks) == 0


async def test_a_failing_task_is_reported_to_on_error_as_it_fails():
    seen: list[BaseException] = []
    tasks = TaskSet(on_error=seen.append)

    async def fail() -> None:
        raise ValueError("broken")

    tasks.start(fail(), "fail")
    await asyncio.sleep(0.01)

    assert [str(error) for error in seen] == ["broken"]
    await tasks.close()  # already reported: nothing raised here


async def test_without_on_error_closing_raises_the_failure():
    tasks = TaskSet()

    async def fail() -> None:
        raise ValueError("disk full")

    tasks.start(fail(), "fail")
    await asyncio.sleep(0.01)

    with pytest.raises(ValueError, match="disk full"):
        await tasks.close()


async def test_leaving_the_block_with_an_error_cancels_what_runs_and_keeps_that_error():
    with pytest.raises(KeyError):
        async with TaskSet() as tasks:
            running = tasks.start(asyncio.sleep(3600), "sleep")
            raise KeyError("the owner's own error")

    assert running.cancelled()


async def test_an_owner_cancelled_while_it_waits_leaves_no_task_behind():
    started = asyncio.Event()
    waited_on: list[asyncio.Task[None]] = []

    async def owner() -> None:
        async with TaskSet() as tasks:
            waited_on.append(tasks.start(asyncio.sleep(3600), "work"))
            started.set()
            await asyncio.shield(waited_on[0])  # a cancelled wait alone would not cancel the task

    outer = asyncio.get_running_loop().create_task(owner())
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert waited_on[0].cancelled()
