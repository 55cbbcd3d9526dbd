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
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from protocols.control import Failure, Ok, Pong
from protocols.membership import ActorRecord, MembershipEvent
from protocols.messages import kind_of, message_type
from runtime import transport
from runtime.compute import ComputeWorker
from runtime.dedup import UNSET, Deduplicator
from runtime.errors import ActorDeadError, ActorError
from runtime.inbox import Delivery, Inbox
from runtime.membership import Membership
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef, Outbox, Target
from runtime.routing import RoleRouter
from runtime.security import load_keys
from runtime.settings import RuntimeSettings
from runtime.tracing import Handling, current_handling, current_trace_id

Handler = Callable[[Any, Any], typing.Awaitable[Any]]


class ActorCrashed(ActorError):
    """A tell handler raised: the actor stopped. The handler's exception is the cause."""


def handler(fn: Handler | None = None, *, urgent: bool = False) -> Any:
    """Mark an async method as the handler of the message type its parameter is annotated with.

    ``@handler(urgent=True)`` handles that message type as soon as it arrives, in its
    own task, beside whatever handler is running: for short protocol steps that a
    long-running handler waits on (the weight channel's ``WeightsReady``). Urgent
    handlers must not touch state the other handlers assume is theirs alone.
    """

    def mark(fn: Handler) -> Handler:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async def")
        fn.__troupe_handler__ = True  # type: ignore[attr-defined]
        fn.__troupe_urgent__ = urgent  # type: ignore[attr-defined]
        return fn

    return mark if fn is None else mark(fn)


def _collect_handlers(cls: type) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for klass in reversed(cls.__mro__):
        for attribute in vars(klass).values():
            if not getattr(attribute, "__troupe_handler__", False):
                continue
            hints = typing.get_type_hints(attribute)
            parameters = [name for name in attribute.__code__.co_varnames[1 : attribute.__code__.co_argcount]]
            if len(parameters) != 1 or parameters[0] not in hints:
                raise TypeError(
                    f"handler {attribute.__qualname__} must take exactly one parameter annotated with a message type"
                )
            message_class = hints[parameters[0]]
            kind = getattr(message_class, "KIND", None)
            if kind is None or message_type(kind) is not message_class:
                raise TypeError(f"handler {attribute.__qualname__}: {message_class!r} is not a registered message type")
            handlers[kind] = attribute
    return handlers


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
    defines one of those names by accident (a helper called `_fail`, a handler called
    `lookup`) would change how the runtime handles every message, so it is refused
    when the class is created."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _refuse_runtime_overrides(cls)
        cls._handlers = _collect_handlers(cls)
        cls._urgent = frozenset(kind for kind, fn in cls._handlers.items() if fn.__troupe_urgent__)  # type: ignore[attr-defined]

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
        log_path = self.run_dir / "logs" / f"{name}.jsonl" if self.run_dir is not None else None
        self.log = MessageLog(log_path, run, name, self.role, enabled=self.settings.log_messages)
        self.compute = ComputeWorker(name)
        self._dedup = Deduplicator(self.settings.dedup_capacity)
        self._router: RoleRouter | None = None
        self.endpoint: str | None = None
        self.membership: Membership | None = None
        self._inbox: Inbox | None = None
        self._outbox: Outbox | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._urgent_tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self._stop_requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
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
            self._router = RoleRouter(self)
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
        task = asyncio.get_running_loop().create_task(_detached(coroutine), name=f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_finished)
        # a task cancelled before it first ran never started `coroutine`: close it (no
        # "never awaited" warning); for one that ran, close() does nothing
        task.add_done_callback(lambda _: coroutine.close())
        return task

    def _task_finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._crash_with(task.exception())  # type: ignore[arg-type]

    @property
    def outbox(self) -> Outbox:
        """Where this actor's asks and tells go out (only while running)."""
        return self._require_outbox()

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
            self._inbox = Inbox(self.name, self.settings, self.log, endpoint, pong, self._crash_with, keys)
            self._inbox.urgent = (self._urgent, self._handle_urgent)
            self.endpoint = self._inbox.endpoint
            if registry is not None:
                self.membership = Membership(self, ActorRef("registry", registry))
            self._outbox = Outbox(self.name, self.settings, self.log, self._crash_with, self.membership, keys)
            self.start_background(self.log.flush_periodically(self.settings.log_flush_interval_s), "log")
            consumers = [self.start_background(self._consume(), f"handler-{i}") for i in range(self.settings.concurrency)]
            await self._start(on_ready)
            await self._stop_requested.wait()
            await self._shut_down(consumers)
        finally:
            self._running = False
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close_sockets()
            self.compute.shutdown(wait=False)
            self.log.lifecycle("actor.stopped", crashed=self._crash is not None)
            self.log.close()
        if self._crash is not None:
            raise ActorCrashed(f"{self.name} crashed: {self._crash!r}") from self._crash

    async def _start(self, on_ready: Callable[[Actor], Any] | None) -> None:
        """Register, run on_start, report ready. A failure here is a crash (an orderly one)."""
        try:
            if self.membership is not None:
                await self.membership.register(self.record(state="starting"))
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
        assert self._inbox is not None
        reason = f"{self.name} stopped" + (" after a crash" if self._crash is not None else "")
        self._inbox.accepting = False
        self._inbox.refuse_queued(reason)
        if self._crash is None:
            try:
                await asyncio.wait_for(self._idle.wait(), self.settings.stop_grace_s)
            except asyncio.TimeoutError:
                pass  # handlers still running are cancelled below; their askers get ActorDead
        urgent = list(self._urgent_tasks)
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

    # ----------------------------------------------------------- handling
    async def _consume(self) -> None:
        assert self._inbox is not None
        while not self._stop_requested.is_set():
            delivery = await self._inbox.mailbox.get()
            self._busy += 1
            self._idle.clear()
            try:
                await self._handle(delivery)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    def _handle_urgent(self, delivery: Delivery) -> None:
        self._busy += 1
        self._idle.clear()
        started: list[bool] = []

        async def handle() -> None:
            started.append(True)
            await self._handle(delivery)

        task = self.start_background(handle(), f"urgent-{delivery.envelope.kind}")
        self._urgent_tasks.add(task)
        task.add_done_callback(lambda task: self._urgent_done(task, delivery, bool(started)))

    def _urgent_done(self, task: asyncio.Task[Any], delivery: Delivery, started: bool) -> None:
        self._urgent_tasks.discard(task)
        if not started and self._inbox is not None:  # cancelled at shutdown before it began: still answer
            self._inbox.refuse_in_progress(delivery, f"{self.name} stopped")
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def _handle(self, delivery: Delivery) -> None:
        inbox = self._inbox
        assert inbox is not None
        envelope = delivery.envelope
        started = time.monotonic()
        queue_s = started - delivery.received_at
        if envelope.deadline is not None and time.time() > envelope.deadline:
            self._fail(delivery, "DeadlineExceeded", "the deadline passed while the message was queued", queue_s, 0.0)
            return
        method = self._handlers.get(envelope.kind)
        if method is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            self._fail(delivery, "UnknownKind", f"{self.name} has no handler for {envelope.kind} (it handles: {known})", queue_s, 0.0)
            return
        if await self._answered_before(delivery, queue_s):
            return
        self._dedup.start(envelope.message_id)
        tokens = (
            current_trace_id.set(envelope.trace_id),
            current_handling.set(Handling(envelope.message_id, envelope.trace_id)),
        )
        try:
            result = await method(self, delivery.message)
        except asyncio.CancelledError:
            self._dedup.fail(envelope.message_id, ActorDeadError(f"{self.name} stopped while handling it"))
            inbox.refuse_in_progress(delivery, f"{self.name} stopped while handling the message")
            raise
        except Exception as error:  # routed to the asker, or crashes the actor for a tell
            self._dedup.fail(envelope.message_id, error)
            handle_s = time.monotonic() - started
            self._log_done(delivery, "failed", queue_s, handle_s, f"{type(error).__name__}: {error}")
            if envelope.expects_reply:
                inbox.reply(delivery, Failure(type(error).__name__, str(error), traceback.format_exc()))
            else:
                inbox.finish(delivery)
                self._crash_with(error)
            return
        finally:
            current_handling.reset(tokens[1])
            current_trace_id.reset(tokens[0])
        handle_s = time.monotonic() - started
        if not envelope.expects_reply:
            self._dedup.succeed(envelope.message_id, None)
            self._log_done(delivery, "handled", queue_s, handle_s)
            inbox.finish(delivery)
            return
        reply = Ok() if result is None else result
        try:
            kind_of(reply)
        except Exception as error:  # a handler bug, reported to the asker rather than sent as garbage
            self._dedup.fail(envelope.message_id, error)
            self._fail(delivery, "ProtocolError", f"handler returned {type(result).__name__}, not a message: {error}", queue_s, handle_s)
            return
        self._dedup.succeed(envelope.message_id, reply)
        self._log_done(delivery, "handled", queue_s, handle_s)
        inbox.reply(delivery, reply)

    async def _answered_before(self, delivery: Delivery, queue_s: float) -> bool:
        """Answer a message this actor has handled (or is handling) already, without handling it again."""
        assert self._inbox is not None
        message_id = delivery.envelope.message_id
        reply = self._dedup.handled_reply(message_id)
        if reply is UNSET:
            running = self._dedup.running(message_id)
            if running is None:
                return False
            try:
                reply = await asyncio.shield(running)
            except Exception as error:  # the first attempt failed: this copy fails the same way
                self._fail(delivery, type(error).__name__, str(error), queue_s, 0.0)
                return True
        self._dedup.duplicates += 1
        self._log_done(delivery, "duplicate", queue_s, 0.0)
        if delivery.envelope.expects_reply:
            self._inbox.reply(delivery, reply if reply is not None else Ok())
        else:
            self._inbox.finish(delivery)
        return True

    def _fail(self, delivery: Delivery, reason: str, text: str, queue_s: float, handle_s: float) -> None:
        """A message that could not be handled: the asker gets a Failure; a tell is logged and dropped."""
        assert self._inbox is not None
        self._log_done(delivery, "failed", queue_s, handle_s, f"{reason}: {text}")
        if delivery.envelope.expects_reply:
            self._inbox.reply(delivery, Failure(reason, text))
        else:
            self._inbox.finish(delivery)

    def _log_done(self, delivery: Delivery, event: str, queue_s: float, handle_s: float, error: str | None = None) -> None:
        envelope = delivery.envelope
        self.log.message_event(
            event, envelope.sender, envelope.kind, envelope.message_id, envelope.correlation_id,
            envelope.trace_id, envelope.nbytes, queue_s, handle_s, error,
        )

    # ----------------------------------------------------- built-in handlers
    @handler
    async def _membership_changed(self, event: MembershipEvent) -> None:
        if self.membership is not None:
            self.membership.apply(event)
        await self.on_membership(event)


Actor._handlers = _collect_handlers(Actor)
_RUNTIME_MEMBERS = frozenset(
    name for name in vars(Actor)
    if not (name.startswith("__") and name.endswith("__"))
    and name not in Actor.OVERRIDABLE
    and name not in ("_handlers", "_urgent")  # set on every subclass by __init_subclass__
)


def _refuse_runtime_overrides(cls: type) -> None:
    """TypeError if `cls` (or a mixin before Actor in its MRO) redefines a runtime member of Actor."""
    clashes = []
    for name in sorted(_RUNTIME_MEMBERS):
        owner = next(klass for klass in cls.__mro__ if name in vars(klass))
        if owner is not Actor:
            clashes.append(f"{name} (defined in {owner.__qualname__})")
    if clashes:
        raise TypeError(
            f"actor class {cls.__qualname__} redefines members the runtime relies on: {', '.join(clashes)}. "
            f"Rename them; a subclass may override only {sorted(Actor.OVERRIDABLE)}"
        )


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
    task = asyncio.get_running_loop().create_task(actor.run(on_ready=lambda _: ready.set(), **run_kwargs))
    waiter = asyncio.get_running_loop().create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the reason it ended
        raise ActorError(f"{actor.name} stopped before it was ready")
    if waiter not in done:
        waiter.cancel()
        actor.stop()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError(f"{actor.name} was not ready within {timeout:g} s")
    return task
