"""Talking to a live run: its run directory tells where, and with which keys.

Two ways in. A `Client` (runtime.client) asks and goes: `troupe ps`, `troupe stop`,
`ask_ready_role`. A `RunSession` stays: an actor of its own (`RunSubscriber`), registered
with the run's registry, on an event loop on a thread of its own so that it heartbeats
and receives while the caller's synchronous code runs (the Python `Run`). It subscribes
to the controller (protocols.run_events) and queues what the controller sends, and
watches membership: the launcher's supervisor leaving means the run has ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.rundir import RunDirError, RunInfo, launcher_gone, read_run_info, role_processes, write_run_info
from protocols.membership import Lookup, LookupResult, MembershipEvent
from protocols.run_events import Release, StepMetrics, StepsDone, Subscribe, Subscribed
from protocols.supervision import StatusQuery
from runtime.actor import Actor, handler, start_actor
from runtime.client import Client
from runtime.errors import ActorDeadError, ActorError
from runtime.outbox import ActorRef
from runtime.run_dir import RunDir
from runtime.settings import RuntimeSettings

LAUNCHER = "supervisor"
"""The name of the launcher's supervisor: when it leaves the registry, the run has ended."""
MAX_QUEUED_EVENTS = 1_000_000
"""Bound of a session's event queue: one entry per step and per evaluation, so only a
runaway sender reaches it (the subscriber then crashes instead of eating memory)."""


def live_run(run_dir: Path | str) -> RunInfo:
    """The run's info, if its launcher is alive; RunDirError (with what to do) otherwise."""
    info = read_run_info(run_dir)
    if info.state in ("finished", "failed"):
        raise RunDirError(f"run {info.run} in {run_dir} is not running: it {info.state} (launcher pid {info.launcher_pid})")
    if launcher_gone(info):
        left = role_processes(run_dir)
        listed = ", ".join(f"{name} (pid {process.pid})" for name, process in sorted(left.items()))
        what_is_left = (f"{len(left)} of its role processes {'is' if len(left) == 1 else 'are'} still running on this host: "
                        f"{listed}; `troupe stop {run_dir}` stops them and records the run as failed" if left else
                        f"none of its role processes is left on this host; `troupe stop {run_dir}` records the run as failed")
        raise RunDirError(f"run {info.run} in {run_dir} is not running: its launcher (pid {info.launcher_pid}) is gone "
                          f"without recording an end (killed?); {what_is_left}")
    return info


def settings_for(info: RunInfo, log_messages: bool) -> RuntimeSettings:
    """Runtime settings holding the run's credentials."""
    return RuntimeSettings(curve_keys_dir=info.curve_keys_dir, secret_file=info.secret_file, log_messages=log_messages)


def client_for(info: RunInfo, name: str, run_dir: Path | str | None = None) -> Client:
    """A client of the run, holding its credentials (its message log in `run_dir`, if given)."""
    return Client(name, registry=info.registry, settings=settings_for(info, run_dir is not None), run=info.run, run_dir=run_dir)


async def ask_supervisor(info: RunInfo, message: Any, timeout: float = 10.0) -> Any:
    async with client_for(info, "troupe-cli") as client:
        try:
            return await client.ask(info.supervisor, message, timeout=timeout)
        except ActorError as error:
            raise RunDirError(f"the supervisor of run {info.run} did not answer: {error}") from error


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(coroutine)`, also from a thread whose event loop is running (a
    notebook's cell), where asyncio.run itself refuses: there on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="troupe-run") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def ask_ready_role(run_dir: Path, role: str, message: Any, timeout: float = 600.0) -> Any:
    """Ask `message` of a ready instance of `role` in the run of `run_dir`, from a client
    of its own (`troupe eval --now`)."""
    info = read_run_info(run_dir)
    async with client_for(info, "python-api", run_dir) as client:
        return await ask_ready(client.ask, info.registry, role, message, timeout)


async def ask_ready(ask: Callable[..., Awaitable[Any]], registry: str, role: str, message: Any, timeout: float) -> Any:
    """Ask `message` of the first ready instance of `role`, waiting (up to `timeout`
    seconds in all) for one to be ready; `ask` is an actor's or a client's."""
    deadline = time.monotonic() + timeout
    while True:
        found: LookupResult = await ask(ActorRef("registry", registry), Lookup(role=role), timeout=30)
        ready = [record for record in found.records if record.state == "ready"]
        if ready:
            return await ask(ready[0].name, message, timeout=max(1.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ready {role} instance in the run after {timeout:g} s")
        await asyncio.sleep(0.5)


async def actor_rows(info: RunInfo) -> list[dict[str, Any]]:
    """One row per actor of a live run: what the supervisor knows, joined with what the registry knows."""
    async with client_for(info, "troupe-ps") as client:
        status = await client.ask(info.supervisor, StatusQuery(), timeout=10)
        records = {record.name: record for record in (await client.ask(info.registry, Lookup(), timeout=10)).records}
    rows = []
    for instance in status.instances:
        record = records.pop(instance.name, None)
        rows.append(_row(instance.name, instance.role, instance.pid, record, instance.state, instance.restarts,
                         instance.started_at, instance.attached))
    for record in records.values():  # actors the supervisor does not run: itself, attached elsewhere, clients
        rows.append(_row(record.name, record.role, record.pid, record, record.state, None, record.registered_at, None))
    return rows


def _row(name: str, role: str, pid: int | None, record: Any, state: str, restarts: int | None,
         started_at: float, attached: bool | None) -> dict[str, Any]:
    live_state = record.state if record is not None and state == "running" else state
    return {
        "name": name, "role": role, "pid": pid, "host": record.host if record is not None else None,
        "state": live_state, "uptime_s": round(time.time() - started_at, 1) if started_at else None,
        "messages_in": record.messages_in if record is not None else None,
        "messages_out": record.messages_out if record is not None else None,
        "weights_version": record.weights_version if record is not None else None,
        "restarts": restarts, "attached": attached, "endpoint": record.endpoint if record is not None else None,
    }


@dataclass(frozen=True)
class LeftBehind:
    """What `stop_left_behind` found and did."""

    run: str
    launcher_pid: int
    grace_s: float
    """How long each process had after SIGTERM before SIGKILL."""
    stopped: list[tuple[str, int, bool]]
    """(instance, pid, whether it had to be killed) of every process stopped."""
    recorded_failed: bool
    """Whether the run is now recorded as failed (when the whole run was stopped)."""


def stop_left_behind(run_dir: Path, instance: str | None, timeout: float) -> LeftBehind:
    """The launcher died without stopping its roles: stop the role processes it left on
    this host (SIGTERM, then SIGKILL after the topology's stop_timeout_s), and record the
    run as failed, so the run directory no longer claims a run is going on. RunDirError
    when `instance` is given and is not running here."""
    import psutil

    info = read_run_info(run_dir)
    left = role_processes(run_dir)
    if instance is not None:
        if instance not in left:
            raise RunDirError(f"{instance} is not running on this host, and the launcher of run {info.run} "
                              f"(pid {info.launcher_pid}) is gone; running here: {', '.join(sorted(left)) or 'none'}")
        left = {instance: left[instance]}
    grace = min(timeout, float(RunDir(run_dir).read_topology().get("stop_timeout_s", 30.0)))
    for process in left.values():
        try:
            process.terminate()
        except psutil.NoSuchProcess:  # it stopped by itself meanwhile
            pass
    _, stubborn = psutil.wait_procs(list(left.values()), timeout=grace)
    for process in stubborn:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(stubborn, timeout=5)
    if instance is None:
        write_run_info(run_dir, info.model_copy(update={"state": "failed"}))
    return LeftBehind(info.run, info.launcher_pid, grace,
                      [(name, process.pid, process in stubborn) for name, process in sorted(left.items())], instance is None)


# ------------------------------------------------------------------ a session that stays
@dataclass(frozen=True)
class RunEnded:
    """Queued by a `RunSubscriber` when the launcher's supervisor left the registry."""

    reason: str


class RunSubscriber(Actor):
    """The Python API's actor in a run: subscribes to `controller` (and again when a
    restarted controller joins), queues every `StepMetrics` and `StepsDone` in `events`
    for the caller's thread, and queues `RunEnded` when the launcher's supervisor leaves.

    Records are queued in the order the controller wrote them: those of the reply to
    `Subscribe` first (every handler waits until the first subscription is answered).
    """

    role = "client"

    def __init__(self, name: str, *, controller: str | None, hold: bool, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.controller = controller
        self.hold = hold
        """Whether this client holds the run after its last step (until `release`)."""
        self.events: queue.Queue[StepMetrics | StepsDone | RunEnded] = queue.Queue(MAX_QUEUED_EVENTS)
        self.steps: int | None = None
        """The run's configured steps, once subscribed."""
        self._answered = asyncio.Event()

    async def on_start(self) -> None:
        try:
            members = await self.watch_membership()
            if any(record.name == self.controller for record in members):
                await self._subscribe()
        finally:
            self._answered.set()

    async def on_membership(self, event: MembershipEvent) -> None:
        if event.event == "joined" and event.record.name == self.controller:
            await self._subscribe()  # a first start, or a restarted controller (it kept no subscribers)
        elif event.event == "left" and event.record.name == LAUNCHER:
            self.events.put_nowait(RunEnded(event.reason or "the launcher stopped"))

    async def _subscribe(self) -> None:
        assert self.controller is not None
        try:
            reply: Subscribed = await self.ask(self.controller, Subscribe(self.name, self.hold), timeout=30)
        except ActorDeadError:  # it died meanwhile; when the supervisor restarts it, it joins again
            return
        self.steps = reply.steps
        for record, evaluation in zip(reply.records, reply.evaluations):
            self.events.put_nowait(StepMetrics(int(record["step"]), record, evaluation))
        if reply.done:
            self.events.put_nowait(StepsDone(max((int(r["step"]) for r in reply.records), default=0)))

    async def release(self) -> None:
        """Stop holding the run (a controller already gone holds nothing)."""
        if self.hold and self.controller is not None:
            self.hold = False
            try:
                await self.ask(self.controller, Release(self.name), timeout=30)
            except ActorError:  # the run ended meanwhile: there is nothing left to release
                pass

    @handler
    async def step_metrics(self, event: StepMetrics) -> None:
        await self._answered.wait()
        self.events.put_nowait(event)

    @handler
    async def steps_done(self, event: StepsDone) -> None:
        await self._answered.wait()
        self.events.put_nowait(event)


class RunSession:
    """A `RunSubscriber` in the run of `info`, served by an event loop on its own thread.

    Args:
        info: the run's registry.json.
        run_dir: the run directory (the subscriber's message log goes to its logs/).
        controller: the controller instance to subscribe to (None: none, only membership).
        hold: whether to hold the run after its last step (see protocols.run_events).
        host: the address to listen on (the topology's ``network.host``).
    """

    def __init__(self, info: RunInfo, run_dir: Path, controller: str | None, hold: bool, host: str) -> None:
        self.info = info
        name = f"python-api-{os.getpid()}-{secrets.token_hex(3)}"
        self.actor = RunSubscriber(name, controller=controller, hold=hold, settings=settings_for(info, True),
                                   run=info.run, run_dir=run_dir)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        try:
            self.task = self.call(start_actor(self.actor, endpoint=f"tcp://{host}:*", registry=info.registry), 90)
        except BaseException:
            self._close_loop()
            raise

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coroutine` on the session's loop; block until it returns (or raises)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def next_event(self, timeout: float) -> StepMetrics | StepsDone | RunEnded | None:
        """The next thing the run sent, or None after `timeout` seconds without one."""
        try:
            return self.actor.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def ask_ready(self, role: str, message: Any, timeout: float = 600.0) -> Any:
        """Ask a ready instance of `role` (blocking); for the API's evaluators."""
        return self.call(ask_ready(self.actor.ask, self.info.registry, role, message, timeout))

    def release(self) -> None:
        self.call(self.actor.release(), 60)

    def close(self) -> None:
        """Stop the subscriber (it deregisters: a controller holding for it stops waiting)."""

        async def stop() -> None:
            self.actor.stop()
            await asyncio.gather(self.task, return_exceptions=True)

        try:
            self.call(stop(), 60)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
