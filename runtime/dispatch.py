"""`Dispatcher`: takes deliveries from an actor's mailbox and runs its handlers.

For each message: refuse it if its deadline passed while it was queued or no
handler takes its kind; answer it from the deduplicator if this actor handled (or
is handling) the same message id already; otherwise run the handler with the
message's trace id current, then reply (an ask) or return credit (a tell).

A handler failure goes back to the asker as a `Failure` carrying the traceback;
a failed tell calls `crash`, and the actor stops (the rules in runtime.actor).
`busy` counts the handlers running, so the actor can wait for `idle` when it stops.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from protocols.control import Failure, Ok
from protocols.messages import kind_of
from runtime.dedup import UNSET, Deduplicator
from runtime.errors import ActorDeadError
from runtime.inbox import Delivery, Inbox
from runtime.msglog import MessageLog
from runtime.tracing import Handling, current_handling, current_trace_id

BoundHandler = Callable[[Any], Awaitable[Any]]
StartTask = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class Dispatcher:
    """Runs one actor's handlers for the deliveries of its inbox.

    Args:
        name: the actor's name (in error texts).
        handlers: message kind -> the handler, bound to the actor.
        inbox: where deliveries come from and replies go.
        dedup: remembers the outcome of recent message ids.
        log: where message events go.
        crash: stops the actor because a tell's handler failed.
        start: starts a task the actor owns (urgent handlers run in one each).
        stopping: set once the actor stops; consumers take no new delivery after it.
    """

    def __init__(
        self,
        name: str,
        handlers: Mapping[str, BoundHandler],
        inbox: Inbox,
        dedup: Deduplicator,
        log: MessageLog,
        crash: Callable[[BaseException], None],
        start: StartTask,
        stopping: asyncio.Event,
    ) -> None:
        self.name = name
        self.handlers = handlers
        self.inbox = inbox
        self.dedup = dedup
        self.log = log
        self.crash = crash
        self.start = start
        self.stopping = stopping
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.urgent_tasks: set[asyncio.Task[Any]] = set()
        """Urgent handlers running (or started and not yet running)."""

    async def consume(self) -> None:
        """Handle deliveries one at a time, in arrival order, until the actor stops."""
        while not self.stopping.is_set():
            delivery = await self.inbox.mailbox.get()
            self._begin()
            try:
                await self.handle(delivery)
            finally:
                # Free the message now, not when the next one arrives: its tensors may be
                # a peer's shared-memory loan, given back once they are freed (runtime.shm).
                del delivery
                self._end()

    def handle_urgent(self, delivery: Delivery) -> None:
        """Handle `delivery` at once in a task of its own, beside the running handlers."""
        self._begin()
        started: list[bool] = []

        async def handle() -> None:
            started.append(True)
            await self.handle(delivery)

        task = self.start(handle(), f"urgent-{delivery.envelope.kind}")
        self.urgent_tasks.add(task)
        task.add_done_callback(lambda task: self._urgent_done(task, delivery, bool(started)))

    def _urgent_done(self, task: asyncio.Task[Any], delivery: Delivery, started: bool) -> None:
        self.urgent_tasks.discard(task)
        if not started:  # cancelled at shutdown before it began: still answer
            self.inbox.refuse_in_progress(delivery, f"{self.name} stopped")
        self._end()

    def _begin(self) -> None:
        self.busy += 1
        self.idle.clear()

    def _end(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self.idle.set()

    async def handle(self, delivery: Delivery) -> None:
        """Run the handler for one delivery and answer it (never raises but CancelledError)."""
        inbox = self.inbox
        envelope = delivery.envelope
        started = time.monotonic()
        queue_s = started - delivery.received_at
        if envelope.deadline is not None and time.time() > envelope.deadline:
            self._fail(delivery, "DeadlineExceeded", "the deadline passed while the message was queued", queue_s, 0.0)
            return
        method = self.handlers.get(envelope.kind)
        if method is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            self._fail(delivery, "UnknownKind", f"{self.name} has no handler for {envelope.kind} (it handles: {known})", queue_s, 0.0)
            return
        if await self._answered_before(delivery, queue_s):
            return
        self.dedup.start(envelope.message_id)
        tokens = (
            current_trace_id.set(envelope.trace_id),
            current_handling.set(Handling(envelope.message_id, envelope.trace_id)),
        )
        try:
            result = await method(delivery.message)
        except asyncio.CancelledError:
            self.dedup.fail(envelope.message_id, ActorDeadError(f"{self.name} stopped while handling it"))
            inbox.refuse_in_progress(delivery, f"{self.name} stopped while handling the message")
            raise
        except Exception as error:  # routed to the asker, or crashes the actor for a tell
            self.dedup.fail(envelope.message_id, error)
            handle_s = time.monotonic() - started
            self._log_done(delivery, "failed", queue_s, handle_s, f"{type(error).__name__}: {error}")
            if envelope.expects_reply:
                inbox.reply(delivery, Failure(type(error).__name__, str(error), traceback.format_exc()))
            else:
                inbox.finish(delivery)
                self.crash(error)
            return
        finally:
            current_handling.reset(tokens[1])
            current_trace_id.reset(tokens[0])
        handle_s = time.monotonic() - started
        if not envelope.expects_reply:
            self.dedup.succeed(envelope.message_id, None)
            self._log_done(delivery, "handled", queue_s, handle_s)
            inbox.finish(delivery)
            return
        reply = Ok() if result is None else result
        try:
            kind_of(reply)
        except Exception as error:  # a handler bug, reported to the asker rather than sent as garbage
            self.dedup.fail(envelope.message_id, error)
            self._fail(delivery, "ProtocolError", f"handler returned {type(result).__name__}, not a message: {error}", queue_s, handle_s)
            return
        self.dedup.succeed(envelope.message_id, reply)
        self._log_done(delivery, "handled", queue_s, handle_s)
        inbox.reply(delivery, reply)

    async def _answered_before(self, delivery: Delivery, queue_s: float) -> bool:
        """Answer a message this actor has handled (or is handling) already, without handling it again."""
        message_id = delivery.envelope.message_id
        reply = self.dedup.handled_reply(message_id)
        if reply is UNSET:
            running = self.dedup.running(message_id)
            if running is None:
                return False
            try:
                reply = await asyncio.shield(running)
            except Exception as error:  # the first attempt failed: this copy fails the same way
                self._fail(delivery, type(error).__name__, str(error), queue_s, 0.0)
                return True
        self.dedup.duplicates += 1
        self._log_done(delivery, "duplicate", queue_s, 0.0)
        if delivery.envelope.expects_reply:
            self.inbox.reply(delivery, reply if reply is not None else Ok())
        else:
            self.inbox.finish(delivery)
        return True

    def _fail(self, delivery: Delivery, reason: str, text: str, queue_s: float, handle_s: float) -> None:
        """A message that could not be handled: the asker gets a Failure; a tell is logged and dropped."""
        self._log_done(delivery, "failed", queue_s, handle_s, f"{reason}: {text}")
        if delivery.envelope.expects_reply:
            self.inbox.reply(delivery, Failure(reason, text))
        else:
            self.inbox.finish(delivery)

    def _log_done(self, delivery: Delivery, event: str, queue_s: float, handle_s: float, error: str | None = None) -> None:
        envelope = delivery.envelope
        self.log.message_event(
            event, envelope.sender, envelope.kind, envelope.message_id, envelope.correlation_id,
            envelope.trace_id, envelope.nbytes, queue_s, handle_s, error,
        )
