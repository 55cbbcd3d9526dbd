"""`Actor`: async handlers per message type, `ask` / `tell`, lifecycle hooks.

An actor is a class with one handler per message type it accepts::

    class Doubler(Actor):
        @handler
        async def double(self, request: DoubleRequest) -> DoubleReply:
            return DoubleReply(value=request.value * 2)

`run()` binds the actor's ROUTER, optionally registers it with the registry, calls
`on_start`, and serves until `stop()`. Handlers run one at a time by default
(`RuntimeSettings.concurrency`), in arrival order.

Error routing (the rules pykka made familiar):
* a handler that raises while answering an ask: the asker gets a `RemoteError`
  carrying the remote traceback, and the actor keeps serving;
* a handler that raises while handling a tell: the actor crashes: it stops, and
  `run()` raises `ActorCrashed`, so its process exits non-zero and the supervisor
  decides;
* messages still queued when an actor stops, and asks arriving while it stops,
  get an `ActorDeadError` at once; asks pending on an actor whose process died
  fail with `ActorDeadError` as soon as the connection drops.

This module is the actor's lifecycle: start, serve, stop, crash. What a class
declares (`handler`, the members a subclass may not redefine) is checked in
runtime.handlers; running a handler for each message is runtime.dispatch's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from protocols.control import Pong
from protocols.membership import ActorRecord, MembershipEvent
from runtime import transport
from runtime.compute import ComputeWorker
from runtime.dedup import Deduplicator
from runtime.dispatch import Dispatcher
from runtime.errors import ActorDeadError, ActorError
from runtime.handlers import (
    Handler,
    collect_handlers,
    handler,
    refuse_runtime_overrides,
    runtime_members,
    urgent_kinds,
)
from runtime.inbox import Inbox
from runtime.membership import Membership
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef, Outbox, Target
from runtime.routing import RoleRouter
from runtime.run_dir import RunDir
from runtime.security import load_keys
from runtime.settings import RuntimeSettings
from runtime.shm.exchange import SharedMemory
from runtime.tasks import TaskSet
from runtime.tracing import current_handling, current_trace_id

__all__ = ["Actor", "ActorCrashed", "Handler", "handler", "start_actor"]


class ActorCrashed(ActorError):
    """A tell handler raised: the actor stopped. The handler's exception is the cause."""


class Actor:
    """Base class of every actor.

    Args:
        name: unique actor name, conventionally ``<role>-<instance>``.
        role: the role (defaults to the class's `role`).
        instance: instance number within the role.
        settings: runtime settings (deadlines, flow control, logging).
        run: run name, stamped on log lines.
        run_dir: where ``logs/<name>.jsonl`` goes (None: no log file).
    """

    role: ClassVar[str] = "actor"
    Config: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of this actor's role-specific config block, if it takes one.
    A topology's ``config:`` for the role is validated against it and passed to the
    constructor as ``config=``."""
    _handlers: ClassVar[dict[str, Handler]] = {}
    _urgent: ClassVar[frozenset[str]] = frozenset()
    OVERRIDABLE: ClassVar[frozenset[str]] = frozenset({"role", "Config", "on_start", "on_stop", "on_membership"})
    """The only members of `Actor` a subclass may redefine: the hooks and the class
    attributes meant for it. Everything else is the runtime's own; a subclass that
    defines one of those names by accident (a helper called `_crash_with`, a handler
    called `lookup`) would change how the runtime runs the actor, so it is refused
    when the class is created."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_runtime_overrides(cls, Actor, _RUNTIME_MEMBERS, Actor.OVERRIDABLE)
        cls._handlers = collect_handlers(cls)
        cls._urgent = urgent_kinds(cls._handlers)

    def __init__(
        self,
        name: str,
        *,
        role: str | None = None,
        instance: int = 0,
        settings: RuntimeSettings | None = None,
        run: str = "",
        run_dir: Path | str | None = None,
    ) -> None:
        self.name = name
        self.role = role or type(self).role
        self.instance = instance
        self.settings = settings or RuntimeSettings()
        self.run_name = run
        self.run_dir = Path(run_dir) if run_dir is not None else None
        log_path = RunDir(self.run_dir).message_log(name) if self.run_dir is not None else None
        self.log = MessageLog(log_path, run, name, self.role, enabled=self.settings.log_messages)
        self.compute = ComputeWorker(name)
        self._dedup = Deduplicator(self.settings.dedup_capacity)
        self._router: RoleRouter | None = None
        self.endpoint: str | None = None
        self.membership: Membership | None = None
        self._inbox: Inbox | None = None
        self._outbox: Outbox | None = None
        self._dispatcher: Dispatcher | None = None
        self._shared_memory: SharedMemory | None = None
        self._tasks = TaskSet(on_error=self._crash_with)
        self._running = False
        self._stop_requested = asyncio.Event()
        self._crash: BaseException | None = None

    # ------------------------------------------------------------ hooks
    async def on_start(self) -> None:
        """Called once the actor can send and receive, before it is marked ready."""

    async def on_stop(self) -> None:
        """Called when the actor stops, after its last handler finished; it can still send."""

    async def on_membership(self, event: MembershipEvent) -> None:
        """Called for each membership event after `watch_membership()`."""

    # --------------------------------------------------------- messaging
    async def ask(self, target: Target, msg: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        """Send `msg` to `target` and return its reply (see `Outbox.ask` for the errors)."""
        return await self._require_outbox().ask(target, msg, timeout, message_id)

    async def ask_role(self, role: str, msg: Any, timeout: float | None = None) -> Any:
        """Ask a live instance of `role`, re-delivering to another if it dies (see runtime.routing)."""
        if self._router is None:
            if self.membership is None:
                raise ActorDeadError(f"{self.name} has no registry: it cannot route work to role {role!r}")
            self._router = RoleRouter(self.ask, self.membership, self.log, self.settings.ask_timeout_s)
        return await self._router.ask(role, msg, timeout)

    async def tell(self, target: Target, msg: Any, timeout: float | None = None) -> None:
        """Send `msg` to `target` without waiting for a reply."""
        await self._require_outbox().tell(target, msg, timeout)

    async def lookup(self, name: str | None = None, role: str | None = None) -> list[ActorRecord]:
        """Registered actors matching `name` and/or `role`."""
        return await self._require_membership().lookup(name=name, role=role)

    async def watch_membership(self) -> list[ActorRecord]:
        """Start receiving membership events (`on_membership`); returns the current members."""
        return await self._require_membership().watch()

    def stop(self) -> None:
        """Ask the actor to stop; `run()` returns once it has."""
        self._stop_requested.set()

    def start_background(self, coroutine: typing.Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coroutine` as one of the actor's own tasks until the actor stops (it is cancelled
        and awaited then). If it raises, the actor crashes and shuts down in order.
        """
        if not self._running:
            coroutine.close()
            raise ActorError(f"{self.name} is not running: start background work from on_start or a handler")
        task = self._tasks.start(_detached(coroutine), name=f"{self.name}-{name}")
        # a task cancelled before it first ran never started `coroutine`: close it (no
        # "never awaited" warning); for one that ran, close() does nothing
        task.add_done_callback(lambda _: coroutine.close())
        return task

    @property
    def outbox(self) -> Outbox:
        """Where this actor's asks and tells go out (only while running)."""
        return self._require_outbox()

    @property
    def shared_memory(self) -> SharedMemory | None:
        """What this actor lends and borrows through shared memory (runtime.shm), while it runs."""
        return self._shared_memory

    def _require_outbox(self) -> Outbox:
        if self._outbox is None:
            raise ActorError(f"{self.name} is not running: call ask/tell from a handler or on_start")
        return self._outbox

    def _require_membership(self) -> Membership:
        if self.membership is None:
            raise ActorError(f"{self.name} was started without a registry; pass registry= to run()")
        return self.membership

    # ------------------------------------------------------------ running
    async def run(
        self,
        endpoint: str = transport.DEFAULT_ENDPOINT,
        registry: str | None = None,
        on_ready: Callable[[Actor], Any] | None = None,
    ) -> None:
        """Serve until `stop()` is called (returns) or a tell handler fails (raises ActorCrashed).

        Args:
            endpoint: where to bind; ``tcp://127.0.0.1:*`` picks a free port,
                ``ipc:///path`` uses a Unix socket.
            registry: the registry's endpoint; when given, the actor registers,
                heartbeats, and can resolve other actors by name.
            on_ready: called with the actor once it is serving (and registered).
        """
        pong = Pong(name=self.name, role=self.role, pid=os.getpid())
        self._running = True
        # Structured concurrency by hand: every task this actor starts is in
        # self._tasks, and none outlives run(), however run() ends.
        try:
            keys = load_keys(self.settings)
            shared = self._shared_memory = SharedMemory(self.settings, self.run_name)
            self._inbox = Inbox(self.name, self.settings, self.log, endpoint, pong, self._crash_with, keys, shared)
            self.endpoint = self._inbox.endpoint
            handlers = {kind: method.__get__(self) for kind, method in self._handlers.items()}
            dispatcher = self._dispatcher = Dispatcher(
                self.name, handlers, self._inbox, self._dedup, self.log, self._crash_with, self.start_background,
                self._stop_requested,
            )
            self._inbox.urgent = (self._urgent, dispatcher.handle_urgent)
            if registry is not None:
                self.membership = Membership(
                    self.ask, ActorRef("registry", registry), self.record(state="starting"), self.log,
                    self.settings.heartbeat_interval_s,
                )
            self._outbox = Outbox(self.name, self.settings, self.log, self._crash_with, self.membership, keys, shared)
            self.start_background(self.log.flush_periodically(self.settings.log_flush_interval_s), "log")
            consumers = [self.start_background(dispatcher.consume(), f"handler-{i}") for i in range(self.settings.concurrency)]
            await self._start(on_ready)
            await self._stop_requested.wait()
            await self._shut_down(consumers)
        finally:
            self._running = False
            await self._tasks.close()
            self._close_sockets()
            if self._shared_memory is not None:  # after the last replies were handed to ZeroMQ
                await self._shared_memory.close(self.settings.stop_linger_s)
            self.compute.shutdown(wait=False)
            self.log.lifecycle("actor.stopped", crashed=self._crash is not None)
            self.log.close()
        if self._crash is not None:
            raise ActorCrashed(f"{self.name} crashed: {self._crash!r}") from self._crash

    async def _start(self, on_ready: Callable[[Actor], Any] | None) -> None:
        """Register, run on_start, report ready. A failure here is a crash (an orderly one)."""
        try:
            if self.membership is not None:
                await self.membership.register()
                self.start_background(self.membership.heartbeat_loop(), "heartbeat")
            await self.on_start()
            if self.membership is not None:
                await self.membership.set_state("ready")
        except Exception as error:  # run() shuts down in order and raises ActorCrashed
            self._crash_with(error)
            return
        self.log.lifecycle("actor.started", endpoint=self.endpoint, pid=os.getpid())
        if on_ready is not None:
            on_ready(self)

    def record(self, state: str = "ready") -> ActorRecord:
        """What the registry should know about this actor."""
        assert self.endpoint is not None
        return ActorRecord(
            name=self.name, role=self.role, instance=self.instance, endpoint=self.endpoint,
            pid=os.getpid(), host=socket.gethostname(), state=state, registered_at=time.time(),
        )

    async def _shut_down(self, consumers: list[asyncio.Task[Any]]) -> None:
        assert self._inbox is not None and self._dispatcher is not None
        reason = f"{self.name} stopped" + (" after a crash" if self._crash is not None else "")
        self._inbox.accepting = False
        self._inbox.refuse_queued(reason)
        if self._crash is None:
            try:
                await asyncio.wait_for(self._dispatcher.idle.wait(), self.settings.stop_grace_s)
            except asyncio.TimeoutError:
                pass  # handlers still running are cancelled below; their askers get ActorDead
        urgent = list(self._dispatcher.urgent_tasks)
        for task in [*consumers, *urgent]:
            task.cancel()
        await asyncio.gather(*consumers, *urgent, return_exceptions=True)
        self._inbox.refuse_queued(reason)
        try:
            await self.on_stop()
        except Exception as error:  # still deregister and close; run() raises ActorCrashed
            self._crash_with(error)
        if self.membership is not None:
            await self.membership.deregister()

    def _crash_with(self, error: BaseException) -> None:
        """Stop because of `error` (a failed tell, a failed hook, or a fault in the runtime).

        Nothing else is handled from now on: the state the failure left behind must
        not answer anyone. Queued messages are refused at once.
        """
        if self._crash is None:
            self._crash = error
            self.log.lifecycle("actor.crashed", error=f"{type(error).__name__}: {error}")
        if self._inbox is not None:
            self._inbox.accepting = False
            self._inbox.refuse_queued(f"{self.name} crashed")
        self.stop()

    def _close_sockets(self) -> None:
        if self._inbox is not None:  # the last replies (to handlers that finished during stop) still go out
            self._inbox.close(int(self.settings.stop_linger_s * 1000))
        if self._outbox is not None:
            self._outbox.close()

    # ----------------------------------------------------- built-in handlers
    @handler
    async def _membership_changed(self, event: MembershipEvent) -> None:
        if self.membership is not None:
            self.membership.apply(event)
            if event.event == "left":  # asks pending on it fail at once with ActorDeadError
                self.outbox.peer_gone(event.record.endpoint, f"left the registry ({event.reason})")
                if self._shared_memory is not None:  # and what it held in replies is reclaimed
                    self._shared_memory.reclaim_named(event.record.name)
        await self.on_membership(event)


Actor._handlers = collect_handlers(Actor)
_PER_CLASS = ("_handlers", "_urgent")  # set on every subclass by __init_subclass__
_RUNTIME_MEMBERS = runtime_members(Actor, Actor.OVERRIDABLE, _PER_CLASS)


async def _detached(coroutine: typing.Coroutine[Any, Any, Any]) -> Any:
    """Run background work outside the message that started it: its sends start their
    own traces and get fresh message ids (a task copies its creator's context)."""
    current_trace_id.set(None)
    current_handling.set(None)
    return await coroutine


async def start_actor(actor: Actor, timeout: float = 60.0, **run_kwargs: Any) -> asyncio.Task[None]:
    """Run `actor` in this event loop as a task; return once it serves.

    Raises whatever stopped the actor before it was ready (ActorCrashed, OSError
    for a bad endpoint), or TimeoutError. Stop it later with ``actor.stop()`` and
    ``await task``.
    """
    ready = asyncio.Event()
    # The task is the caller's from the moment this returns; until then it is ours:
    # if this call is cancelled, the actor is stopped and awaited here.
    task = asyncio.get_running_loop().create_task(actor.run(on_ready=lambda _: ready.set(), **run_kwargs))
    try:
        async with TaskSet() as waiting:
            waiter = waiting.start(ready.wait())
            done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        actor.stop()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if task in done:
        task.result()  # raises the reason it ended
        raise ActorError(f"{actor.name} stopped before it was ready")
    if waiter not in done:
        actor.stop()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError(f"{actor.name} was not ready within {timeout:g} s")
    return task
