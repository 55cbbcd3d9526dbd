"""A client subscribed to a run's metrics (protocols.run_events): the controller's side
(roles.subscribers) in a stand-in actor, the client's side the Python API's own
`RunSession` (its actor on a thread of its own), with a real registry between them."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

from launch.client import RunEnded, RunSession
from protocols.run_events import StepsDone
from roles.controller import Controller
from roles.subscribers import Subscribers
from runtime.actor import Actor
from runtime.registry import Registry
from runtime.run_info import RunInfo

STEPS = 3


class MetricsSource(Actor):
    """Stands in for the controller (which needs models): its bookkeeping and its handlers."""

    role = "controller"
    subscribe_client = Controller.subscribe_client
    release_client = Controller.release_client

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.subscribers = Subscribers(self.ask, self.lookup, self.log.lifecycle, STEPS)


async def started(run_here, tmp_path: Path) -> tuple[MetricsSource, RunInfo]:  # type: ignore[no-untyped-def]
    registry = Registry("registry", run_dir=tmp_path)
    await run_here(registry)
    source = MetricsSource("controller-0", run_dir=tmp_path)
    await run_here(source, registry=registry.endpoint)
    info = RunInfo(run="subscription", registry=registry.endpoint, supervisor="", launcher_pid=os.getpid(),
                   host=socket.gethostname(), started_at=time.time())
    return source, info


async def open_session(info: RunInfo, tmp_path: Path, hold: bool) -> RunSession:
    # the session blocks its caller until it is subscribed: not this loop, which serves the registry
    return await asyncio.to_thread(RunSession, info, tmp_path, "controller-0", hold, "127.0.0.1")


async def events_until_done(session: RunSession) -> list[Any]:
    events = []
    while not events or not isinstance(events[-1], (StepsDone, RunEnded)):
        event = await asyncio.to_thread(session.next_event, 10.0)
        assert event is not None, f"nothing more came after {events}"
        events.append(event)
    return events


async def test_a_late_subscriber_gets_what_was_written_before_it_then_every_later_record_in_order(run_here, tmp_path):
    source, info = await started(run_here, tmp_path)
    await source.subscribers.publish({"step": 1, "train/reward": 0.1})
    await source.subscribers.publish({"step": 1, "eval/accuracy": 0.5}, evaluation=True)
    session = await open_session(info, tmp_path, hold=False)
    try:
        await source.subscribers.publish({"step": 2, "train/reward": 0.2})
        await source.subscribers.publish({"step": 3, "train/reward": 0.3})
        await source.subscribers.finish(STEPS, hold_timeout_s=5)
        events = await events_until_done(session)
    finally:
        await asyncio.to_thread(session.close)
    assert [(e.step, e.evaluation) for e in events[:-1]] == [(1, False), (1, True), (2, False), (3, False)]
    assert events[2].metrics == {"step": 2, "train/reward": 0.2}
    assert events[-1] == StepsDone(STEPS)


async def test_a_subscriber_after_the_last_step_still_gets_every_record_and_the_end(run_here, tmp_path):
    source, info = await started(run_here, tmp_path)
    for step in range(1, STEPS + 1):
        await source.subscribers.publish({"step": step, "train/reward": 0.0})
    await source.subscribers.finish(STEPS, hold_timeout_s=5)
    session = await open_session(info, tmp_path, hold=False)
    try:
        events = await events_until_done(session)
    finally:
        await asyncio.to_thread(session.close)
    assert [e.step for e in events[:-1]] == [1, 2, 3] and isinstance(events[-1], StepsDone)


async def test_the_end_of_the_run_waits_for_a_holding_subscriber_until_it_releases_the_run(run_here, tmp_path):
    source, info = await started(run_here, tmp_path)
    session = await open_session(info, tmp_path, hold=True)
    try:
        finishing = asyncio.create_task(source.subscribers.finish(STEPS, hold_timeout_s=60))
        await asyncio.sleep(1.5)
        assert not finishing.done(), "the run ended while a subscriber held it"
        await asyncio.to_thread(session.release)
        await asyncio.wait_for(finishing, 5)
    finally:
        await asyncio.to_thread(session.close)


async def test_a_holding_subscriber_that_goes_away_no_longer_holds_the_run(run_here, tmp_path):
    source, info = await started(run_here, tmp_path)
    session = await open_session(info, tmp_path, hold=True)
    finishing = asyncio.create_task(source.subscribers.finish(STEPS, hold_timeout_s=60))
    await asyncio.sleep(1.0)
    assert not finishing.done()
    await asyncio.to_thread(session.close)  # it deregisters, as a process that exits does
    await asyncio.wait_for(finishing, 5)
    assert source.subscribers.holding == set()


async def test_a_hold_ends_at_its_deadline(run_here, tmp_path):
    source, info = await started(run_here, tmp_path)
    session = await open_session(info, tmp_path, hold=True)
    try:
        began = time.monotonic()
        await asyncio.wait_for(source.subscribers.finish(STEPS, hold_timeout_s=1.0), 10)
        assert 1.0 <= time.monotonic() - began < 5
    finally:
        await asyncio.to_thread(session.close)
