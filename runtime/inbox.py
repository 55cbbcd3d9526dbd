"""Receiving: one ROUTER socket, a bounded mailbox, replies and credit.

Receiving never blocks on handlers: for each message it decodes, answers
liveness pings at once, refuses what cannot be handled (undecodable, unknown
kind, mailbox full, actor stopping) with a typed failure the asker sees, and puts
the rest in the mailbox. The actor's consumer tasks take deliveries from the
mailbox, run handlers, and call `reply` / `finish`, which return flow-control
credit to the sender.

With shared memory on (runtime.shm), tensors a peer on this host lent arrive as
views on its segments, and go back to it in a `SharedRelease` over this socket once
freed; a reply to such a peer lends it its large tensors the same way, and the
peer's releases arrive here, outside the mailbox.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import zmq

from protocols.control import Credit, Failure, Ping
from protocols.envelope import Envelope, decode_envelope, encode_envelope, new_id, read_return_address
from protocols.errors import ProtocolError
from protocols.messages import from_payload, kind_of, to_payload
from protocols.shared_memory import OpenShared, SharedRelease
from runtime import transport
from runtime.flow import CreditOwed
from runtime.msglog import MessageLog
from runtime.security import Credentials
from runtime.settings import RuntimeSettings
from runtime.shm.exchange import Lending, SharedMemory


@dataclass
class Delivery:
    """A message waiting in (or taken from) the mailbox."""

    routing_id: bytes
    envelope: Envelope
    message: Any
    received_at: float  # time.monotonic()


class ReplyRoute(NamedTuple):
    """Where the releases of loans that arrived from one connection go: back to it."""

    inbox: Inbox
    routing_id: bytes

    def send_release(self, release: SharedRelease) -> None:
        self.inbox.send_release(self.routing_id, release)


class Inbox:
    """An actor's receiving end.

    Args:
        name: the actor's name (the sender of replies).
        endpoint: where to bind (``tcp://127.0.0.1:*`` picks a free port).
        pong: the reply to a `Ping`, answered without entering the mailbox.
        on_error: called if receiving fails (a bug, not bad input): the actor stops.
        shared: the actor's shared memory (None: tensors travel only as frames).
    """

    def __init__(
        self,
        name: str,
        settings: RuntimeSettings,
        log: MessageLog,
        endpoint: str,
        pong: Any,
        on_error: Callable[[BaseException], None],
        keys: Credentials | None = None,
        shared: SharedMemory | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.log = log
        self.pong = pong
        router, self.endpoint = transport.bind_router(endpoint, settings.max_message_bytes, keys)
        on = shared is not None and shared.identity is not None and not self.endpoint.startswith("inproc://")
        self.shared = shared if on else None
        self.shm_host = self.shared.identity if self.shared is not None else None
        """This actor's shared-memory identity, stamped on everything it sends (None: it takes none)."""
        self.socket = transport.LoopSocket(router, self._accept, on_error, queue_when_full=False)
        self.refusals: RefusalLog | None = None
        self._refusal_monitor: transport.LoopSocket | None = None
        if keys is not None:
            self.refusals = RefusalLog(log, self.endpoint)
            watcher = transport.monitor(router, transport.HANDSHAKE_FAILURES)
            self._refusal_monitor = transport.LoopSocket(
                watcher, lambda frames: self.refusals.record(*transport.parse_event_value(frames)), on_error  # type: ignore[union-attr]
            )
        self.mailbox: asyncio.Queue[Delivery] = asyncio.Queue(settings.mailbox_capacity)
        self.credit: dict[bytes, CreditOwed] = {}
        self.accepting = True
        self.urgent: tuple[frozenset[str], Callable[[Delivery], None]] = (frozenset(), lambda _: None)
        """Kinds handled at once beside the mailbox, and the function that starts handling one."""

    # --------------------------------------------------------------- arrival
    def _accept(self, frames: list[zmq.Frame]) -> None:
        routing_id = frames[0].bytes
        data = [frame.buffer for frame in frames[1:]]
        try:
            settings = self.settings
            envelope = decode_envelope(
                data, settings.max_message_bytes, settings.max_header_bytes, settings.max_header_objects,
                self._open_shared(routing_id),
            )
        except ProtocolError as error:
            size = error.message_bytes if error.message_bytes is not None else sum(view.nbytes for view in data)
            self._refuse_undecodable(routing_id, data, size, error)
            return
        self.log.message_event(
            "receive", envelope.sender, envelope.kind, envelope.message_id, envelope.correlation_id,
            envelope.trace_id, envelope.nbytes,
        )
        if envelope.kind == SharedRelease.KIND:
            self._take_release(routing_id, envelope)
            return
        if envelope.kind == Ping.KIND:
            self._send_now(routing_id, self._reply_envelope(envelope, self.pong, (1, envelope.nbytes)), envelope.sender)
            return
        if not self.accepting:
            self._refuse(routing_id, envelope, "ActorDead", f"{self.name} is stopping and accepts no new messages")
            return
        try:
            message = from_payload(envelope.kind, envelope.payload)
        except ProtocolError as error:
            self._refuse(routing_id, envelope, "ProtocolError", str(error))
            return
        delivery = Delivery(routing_id, envelope, message, time.monotonic())
        kinds, start = self.urgent
        if envelope.kind in kinds:
            self.credit.setdefault(routing_id, CreditOwed()).held_messages += 1
            start(delivery)
            return
        try:
            self.mailbox.put_nowait(delivery)
        except asyncio.QueueFull:
            self._refuse(
                routing_id, envelope, "MailboxFull",
                f"{self.name}'s mailbox holds {self.settings.mailbox_capacity} messages; the sender ignored flow control",
            )
            return
        self.credit.setdefault(routing_id, CreditOwed()).held_messages += 1

    def _open_shared(self, routing_id: bytes) -> OpenShared | None:
        shared = self.shared
        if shared is None:
            return None
        return lambda places: shared.open(ReplyRoute(self, routing_id), places)

    def _take_release(self, routing_id: bytes, envelope: Envelope) -> None:
        """A peer freed tensors this actor lent it in replies: the segments may be reused."""
        try:
            release = from_payload(envelope.kind, envelope.payload)
        except ProtocolError as error:  # a malformed release frees nothing; the sender learns nothing either
            self.log.message_event("failed", envelope.sender, envelope.kind, envelope.message_id, None, None,
                                   envelope.nbytes, error=f"ProtocolError: {error}")
            return
        if self.shared is not None:
            self.shared.release(routing_id, release)

    def _refuse_undecodable(self, routing_id: bytes, data: list[memoryview], wire_bytes: int, error: ProtocolError) -> None:
        self.log.message_event("failed", "?", "?", "?", None, None, wire_bytes, error=f"ProtocolError: {error}")
        # Answer the asker if the header at least says who it is and that it waits.
        address = read_return_address(data[0]) if data else None
        if address is None:
            return  # not our protocol: there is no one to answer
        message_id, sender, expects_reply = address
        if not expects_reply:
            # A well-meaning sender spent credit on this tell: give it back.
            self._send_now(routing_id, self._credit_envelope((1, wire_bytes)), sender)
            return
        stub = Envelope(kind="?", message_id=message_id, sender=sender, sent_at=0.0, expects_reply=True, nbytes=wire_bytes)
        failure = Failure("ProtocolError", f"{self.name} could not decode the message: {error}")
        self._send_now(routing_id, self._reply_envelope(stub, failure, (1, wire_bytes)), sender)

    def _refuse(self, routing_id: bytes, envelope: Envelope, reason: str, text: str) -> None:
        self.log.message_event(
            "failed", envelope.sender, envelope.kind, envelope.message_id, envelope.correlation_id,
            envelope.trace_id, envelope.nbytes, error=f"{reason}: {text}",
        )
        credits = (1, envelope.nbytes)
        if envelope.expects_reply:
            self._send_now(routing_id, self._reply_envelope(envelope, Failure(reason, text), credits), envelope.sender)
        else:
            self._send_now(routing_id, self._credit_envelope(credits), envelope.sender)

    # -------------------------------------------------------------- leaving
    def reply(self, delivery: Delivery, message: Any) -> None:
        """Answer an ask; the reply carries back the credit owed to its sender."""
        self._done(delivery)
        request = delivery.envelope
        envelope = self._reply_envelope(request, message, self._take(delivery.routing_id))
        lending = (
            self.shared.lending(delivery.routing_id, request.sender, request.shm_host) if self.shared is not None else None
        )
        self._send_now(delivery.routing_id, envelope, request.sender, lending)
        self._return_credit_if_idle()

    def send_release(self, routing_id: bytes, release: SharedRelease) -> None:
        """Give loans back to the peer on connection `routing_id` (nothing if this inbox is closed)."""
        if self.socket.closed:
            return
        envelope = Envelope(kind=SharedRelease.KIND, message_id=new_id(), sender=self.name, sent_at=time.time(),
                            payload=to_payload(release), shm_host=self.shm_host)
        self._send_now(routing_id, envelope, "?")

    def finish(self, delivery: Delivery) -> None:
        """A tell was handled: its credit goes back with the next batch (or now, if idle)."""
        self._done(delivery)
        if self.credit[delivery.routing_id].owed_messages >= self.settings.credit_batch:
            self._send_credit(delivery.routing_id, delivery.envelope.sender)
        self._return_credit_if_idle()

    def refuse_queued(self, reason: str) -> None:
        """Empty the mailbox: asks get ActorDead, tells are dropped (and logged)."""
        while not self.mailbox.empty():
            self.refuse_in_progress(self.mailbox.get_nowait(), reason)

    def refuse_in_progress(self, delivery: Delivery, reason: str) -> None:
        """A delivery will not be handled (the actor is stopping): tell its sender."""
        owed = self.credit[delivery.routing_id]
        owed.held_messages -= 1
        if owed.held_messages == 0 and owed.owed_messages == 0:
            del self.credit[delivery.routing_id]
        self._refuse(delivery.routing_id, delivery.envelope, "ActorDead", reason)

    def close(self, linger_ms: int = 0) -> None:
        """Stop receiving; replies already sent get `linger_ms` to leave."""
        self.accepting = False
        if self._refusal_monitor is not None:
            self.socket.sock.disable_monitor()
            self._refusal_monitor.close()
        self.socket.close(linger_ms)

    def _done(self, delivery: Delivery) -> None:
        owed = self.credit[delivery.routing_id]
        owed.held_messages -= 1
        owed.owed_messages += 1
        owed.owed_bytes += delivery.envelope.nbytes

    def _return_credit_if_idle(self) -> None:
        """With nothing left to handle, every sender gets back all credit owed to it, so no
        sender waits for credit on an idle actor."""
        if not self.mailbox.empty():
            return
        for routing_id in [r for r, owed in self.credit.items() if owed.owed_messages]:
            self._send_credit(routing_id, "?")

    def _send_credit(self, routing_id: bytes, peer: str) -> None:
        self._send_now(routing_id, self._credit_envelope(self._take(routing_id)), peer)

    # -------------------------------------------------------------- helpers
    def _take(self, routing_id: bytes) -> tuple[int, int]:
        owed = self.credit[routing_id]
        credits = owed.take()
        if owed.held_messages == 0:
            del self.credit[routing_id]
        return credits

    def _reply_envelope(
        self, request: Envelope, message: Any, credits: tuple[int, int], correlate: bool = True
    ) -> Envelope:
        return Envelope(
            kind=kind_of(message),
            message_id=new_id(),
            sender=self.name,
            sent_at=time.time(),
            payload=to_payload(message),
            correlation_id=request.message_id if correlate else None,
            trace_id=request.trace_id,
            credits=credits,
            shm_host=self.shm_host,
        )

    def _credit_envelope(self, credits: tuple[int, int]) -> Envelope:
        return Envelope(kind=Credit.KIND, message_id=new_id(), sender=self.name, sent_at=time.time(), credits=credits,
                        shm_host=self.shm_host)

    def _send_now(self, routing_id: bytes, envelope: Envelope, peer: str, lending: Lending | None = None) -> None:
        """Send to one peer now. A peer that is gone (EHOSTUNREACH) or not reading what
        it is sent (EAGAIN: its queue is full) misses this message; its ask, if any,
        runs into its deadline, and nobody else waits behind it."""
        frames, nbytes = encode_envelope(envelope, lending)
        try:
            self.socket.send([routing_id, *frames])
        except zmq.ZMQError as error:
            if lending is not None:  # the message never left: its segment goes back to the pool
                lending.cancel()
            if error.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self._log_sent(envelope, peer, nbytes, error=f"{zmq.strerror(error.errno)}: not delivered")
            return
        self._log_sent(envelope, peer, nbytes)

    def _log_sent(self, envelope: Envelope, peer: str, nbytes: int, error: str | None = None) -> None:
        self.log.message_event(
            "send" if error is None else "failed", peer, envelope.kind, envelope.message_id,
            envelope.correlation_id, envelope.trace_id, nbytes, error=error, ts=envelope.sent_at,
        )


_HANDSHAKE_REASONS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "wrong credentials (not the run's secret or an authorized CURVE key)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "no credentials (the peer does not authenticate the way the run does)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed",
}


class RefusalLog:
    """Writes ``security.refused`` lines for peers refused at the handshake: the first of
    each reason at once, then at most one a second per reason with the count since, so a
    flood of attempts cannot flood the log."""

    INTERVAL_S = 1.0

    def __init__(self, log: MessageLog, endpoint: str) -> None:
        self.log = log
        self.endpoint = endpoint
        self.total = 0
        self._by_reason: dict[str, tuple[float, int]] = {}
        """reason -> (when a line was last written, refusals since)."""

    def record(self, event: int, value: int) -> None:
        self.total += 1
        reason = _HANDSHAKE_REASONS.get(event, f"handshake event {event}")
        last_logged, unlogged = self._by_reason.get(reason, (-float("inf"), 0))
        now = time.monotonic()
        if now - last_logged < self.INTERVAL_S:
            self._by_reason[reason] = (last_logged, unlogged + 1)
            return
        self.log.lifecycle("security.refused", endpoint=self.endpoint, reason=reason, code=value,
                           refused=unlogged + 1, refused_total=self.total)
        self._by_reason[reason] = (now, 0)
