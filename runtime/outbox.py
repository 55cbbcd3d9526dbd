"""Sending: `ask` and `tell` over one DEALER link per peer.

A `Link` (runtime.link) is this process's connection to one peer endpoint. It carries
requests out and replies and credit back and tracks the asks waiting for replies; the
outbox watches its connection: when the peer's process goes away (stopped or killed), the asks
pending on it fail with `ActorDeadError` at once instead of waiting out their
deadlines.

With shared memory on (runtime.shm), a message to a peer that said it is on this
host lends it the message's large tensors; the peer's releases come back on the
link, and what a lost peer held is reclaimed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from protocols.control import Failure, Ok
from protocols.envelope import Envelope, decode_envelope, encode_envelope
from protocols.errors import ProtocolError
from protocols.messages import from_payload, kind_of, to_payload
from protocols.shared_memory import SharedRelease
from runtime.errors import ActorDeadError, AuthenticationError, DeadlineExceeded, RemoteError
from runtime.flow import SendWindow
from runtime.link import ActorRef, Link, PendingAsk
from runtime.msglog import MessageLog
from runtime.security import Credentials
from runtime.settings import RuntimeSettings
from runtime.shm.exchange import Lending, SharedMemory
from runtime.tracing import message_id_for_send, trace_id_for_send


Target = ActorRef | str
"""An `ActorRef`, an endpoint (``"tcp://127.0.0.1:5555"``) or a registered actor name."""


class NameResolver(Protocol):
    """Where registered actors listen (runtime.membership.Directory and Membership)."""

    async def resolve(self, name: str) -> ActorRef: ...

    def forget(self, name: str) -> None: ...


_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the security handshake failed (the two sides authenticate differently: this process may lack the "
        "run's secret or CURVE keys)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed (this process's secret or CURVE key is not the run's)",
}


def _refund_if_unsent(window: SendWindow, nbytes: int, lending: Lending | None, sent: asyncio.Future[None]) -> None:
    """A queued message that ZeroMQ finally refused never reaches the receiver: take its
    credit (and its shared-memory segment) back."""
    if sent.cancelled() or sent.exception() is not None:
        window.release(1, nbytes)
        if lending is not None:
            lending.cancel()


def _expire(future: asyncio.Future[Envelope], kind: str, target: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"ask {kind} to {target}: no reply within {timeout:g} s"))


class Outbox:
    """Sends asks and tells from one actor (or client) to any number of peers.

    Args:
        name: the sender's name, stamped on every message.
        settings: runtime settings (deadlines, windows).
        log: the message log to record send/receive events in.
        on_error: called when servicing a socket fails (a bug, not bad input):
            the owner stops.
        names: resolves registered actor names (``resolve(name)``) and drops a
            name whose endpoint turned out dead (``forget(name)``); None: only refs
            and endpoints are accepted.
        keys: the run's credentials, when its sockets authenticate (runtime.security).
        shared: the owner's shared memory (None: tensors travel only as frames).
    """

    def __init__(
        self,
        name: str,
        settings: RuntimeSettings,
        log: MessageLog,
        on_error: Callable[[BaseException], None],
        names: NameResolver | None = None,
        keys: Credentials | None = None,
        shared: SharedMemory | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.log = log
        self.on_error = on_error
        self.names = names
        self.keys = keys
        self.shared = shared if shared is not None and shared.identity is not None else None
        self.shm_host = self.shared.identity if self.shared is not None else None
        self.links: dict[str, Link] = {}
        self.closed = False

    # ----------------------------------------------------------------- API
    async def ask(self, target: Target, msg: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        """Send `msg` and wait for the reply message.

        `message_id` re-uses the id of an earlier attempt (a re-delivery), so a
        receiver that handled it already answers without handling it again.

        Raises:
            RemoteError: the handler raised (with its remote traceback), or the
                receiver refused the message (ProtocolError, MailboxFull, ...).
            ActorDeadError: the target stopped, died, or is unknown.
            DeadlineExceeded: no reply (or no send credit) within `timeout` seconds.
        """
        timeout = self.settings.ask_timeout_s if timeout is None else timeout
        started = time.monotonic()
        ref, link, envelope, frames, nbytes, lending = await self._prepare(target, msg, timeout, True, message_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Envelope] = loop.create_future()
        link.pending[envelope.message_id] = PendingAsk(future, time.monotonic())
        # A plain timer is several times cheaper than asyncio.timeout() on this path.
        remaining = max(0.0, timeout - (time.monotonic() - started))
        timer = loop.call_later(remaining, _expire, future, envelope.kind, ref.name, timeout)
        try:
            waiter = self._send(link, envelope, frames, nbytes, lending)
            if waiter is not None:
                await waiter
            reply = await future
        finally:
            timer.cancel()
            link.pending.pop(envelope.message_id, None)
        return self._unwrap_reply(ref, reply)

    async def tell(self, target: Target, msg: Any, timeout: float | None = None) -> None:
        """Send `msg` without waiting for a reply (only for flow-control credit).

        Raises:
            DeadlineExceeded: no send credit within `timeout` seconds.
            ActorDeadError: `target` is a name the registry does not know.
        """
        timeout = self.settings.send_timeout_s if timeout is None else timeout
        _, link, envelope, frames, nbytes, lending = await self._prepare(target, msg, timeout, False)
        waiter = self._send(link, envelope, frames, nbytes, lending)
        if waiter is not None:
            await waiter
        elif lending is not None and lending.lease is not None:
            # A burst of tells would not read the peer's releases until credit ran out,
            # and each message would need a new segment; one turn of the loop lets them in.
            await asyncio.sleep(0)

    def peer_gone(self, endpoint: str, reason: str) -> None:
        """The peer at `endpoint` is known to be dead: fail its asks and credit waits, drop the link."""
        link = self.links.pop(endpoint, None)
        if link is not None:
            error = ActorDeadError(f"{link.ref.name} is dead: {reason}")
            link.fail_pending(error)
            link.window.break_with(error)
            link.close()
            if self.shared is not None:
                self.shared.reclaim(link)

    def close(self) -> None:
        """Close every link; asks and sends still waiting fail with ActorDeadError."""
        self.closed = True
        for link in self.links.values():
            error = ActorDeadError(f"{self.name} is stopping; the message to {link.ref.name} was abandoned")
            link.fail_pending(error)
            link.window.break_with(error)
            link.close()
        self.links.clear()

    # ------------------------------------------------------------ internals
    async def _prepare(
        self, target: Target, msg: Any, timeout: float, expects_reply: bool, message_id: str | None = None
    ) -> tuple[ActorRef, Link, Envelope, list[Any], int, Lending | None]:
        if self.closed:
            raise ActorDeadError(f"{self.name} is stopped and cannot send")
        ref, link = await self._route(target)
        now = time.time()
        envelope = Envelope(
            kind=kind_of(msg),
            message_id=message_id if message_id is not None else message_id_for_send(),
            sender=self.name,
            sent_at=now,
            payload=to_payload(msg),
            trace_id=trace_id_for_send(),
            # A tell has no deadline: `timeout` bounds only the wait for credit here,
            # and a tell queued behind a long handler must still be handled.
            deadline=now + timeout if expects_reply else None,
            expects_reply=expects_reply,
            shm_host=self.shm_host,
        )
        lending = None
        if self.shared is not None and not link.inproc:
            lending = self.shared.lending(link, ref.name, link.peer_shm_host)
        try:
            frames, nbytes = encode_envelope(envelope, lending)
            if not link.window.try_acquire(nbytes):
                await link.window.acquire(nbytes, timeout)
        except BaseException as error:
            if lending is not None:  # the message will not be sent: its segment goes back to the pool
                lending.cancel()
            if not isinstance(error, TimeoutError):
                raise
            raise DeadlineExceeded(
                f"{'ask' if expects_reply else 'tell'} {envelope.kind} to {ref.name}: no flow-control credit "
                f"within {timeout:g} s ({link.window.messages} messages, {link.window.bytes} bytes in flight; "
                "the receiver is slow or gone)"
            ) from None
        return ref, link, envelope, frames, nbytes, lending

    def _send(
        self, link: Link, envelope: Envelope, frames: list[Any], nbytes: int, lending: Lending | None = None
    ) -> asyncio.Future[None] | None:
        """Send now; returns a future to await when ZeroMQ had to queue the message."""
        try:
            waiter = link.socket.send(frames)
        except BaseException:
            link.window.release(1, nbytes)
            if lending is not None:
                lending.cancel()
            raise
        if waiter is not None:
            waiter.add_done_callback(functools.partial(_refund_if_unsent, link.window, nbytes, lending))
        self.log.message_event(
            "send", link.ref.name, envelope.kind, envelope.message_id, None, envelope.trace_id, nbytes,
            ts=envelope.sent_at,
        )
        return waiter

    async def _route(self, target: Target) -> tuple[ActorRef, Link]:
        """The target's address and the link to it; ActorDeadError if it is known to be gone."""
        if isinstance(target, ActorRef):
            ref = target
        elif "://" in target:
            ref = ActorRef(target, target)
        elif self.names is None:
            raise ActorDeadError(f"cannot find actor {target!r}: no registry is configured; pass an ActorRef or endpoint")
        else:
            ref = await self.names.resolve(target)
            if self._link(ref).connected is False:
                # The cached endpoint is dead: the actor may have restarted elsewhere.
                self.names.forget(target)
                ref = await self.names.resolve(target)
        link = self._link(ref)
        if link.refused is not None:
            raise AuthenticationError(f"{ref.name} ({ref.endpoint}) refused the connection: {link.refused}")
        if link.connected is False:
            # ZeroMQ would queue the message until something listens there again;
            # the caller learns now that the actor is gone.
            raise ActorDeadError(f"{ref.name} ({ref.endpoint}) disconnected and has not come back")
        return ref, link

    def _link(self, ref: ActorRef) -> Link:
        link = self.links.get(ref.endpoint)
        if link is None:
            link = Link(ref, self.settings, self._accept_reply, self._connection_changed, self.on_error, self.keys,
                        self.name, self.shm_host)
            if self.shared is not None and not link.inproc:
                link.open_shared = functools.partial(self.shared.open, link)
            self.links[ref.endpoint] = link
        return link

    def _unwrap_reply(self, ref: ActorRef, reply: Envelope) -> Any:
        message = from_payload(reply.kind, reply.payload)
        if isinstance(message, Failure):
            if message.error_type == "ActorDead":
                raise ActorDeadError(f"{ref.name}: {message.message}")
            raise RemoteError(ref.name, message.error_type, message.message, message.traceback)
        return None if isinstance(message, Ok) else message

    def _accept_reply(self, link: Link, frames: list[zmq.Frame]) -> None:
        try:
            settings = self.settings
            envelope = decode_envelope(
                [frame.buffer for frame in frames], settings.max_message_bytes, settings.max_header_bytes,
                settings.max_header_objects, link.open_shared,
            )
        except ProtocolError as error:
            # A peer that sends garbage back must not take this actor down; the ask it
            # belonged to (if any) runs into its deadline.
            self.log.message_event("failed", link.ref.name, "?", "?", None, None, 0, error=f"ProtocolError: {error}")
            return
        if envelope.credits is not None:
            link.window.release(*envelope.credits)
        link.peer_shm_host = envelope.shm_host
        self.log.message_event(
            "receive", link.ref.name, envelope.kind, envelope.message_id, envelope.correlation_id,
            envelope.trace_id, envelope.nbytes,
        )
        if envelope.kind == SharedRelease.KIND:
            self._take_release(link, envelope)
            return
        if envelope.correlation_id is None:
            return  # credit only
        pending = link.pending.pop(envelope.correlation_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(envelope)

    def _take_release(self, link: Link, envelope: Envelope) -> None:
        """The peer freed tensors this sender lent it: the segments may be reused."""
        try:
            release = from_payload(envelope.kind, envelope.payload)
        except ProtocolError as error:  # a malformed release frees nothing
            self.log.message_event("failed", link.ref.name, envelope.kind, envelope.message_id, None, None,
                                   envelope.nbytes, error=f"ProtocolError: {error}")
            return
        if self.shared is not None:
            self.shared.release(link, release)

    def _connection_changed(self, link: Link, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            link.connected = True
        elif event in _HANDSHAKE_FAILURES:
            link.refused = _HANDSHAKE_FAILURES[event]
            link.connected = False
            error = AuthenticationError(f"{link.ref.name} ({link.ref.endpoint}) refused the connection: {link.refused}")
            link.fail_pending(error)
            link.window.break_with(error)
        elif event == zmq.EVENT_DISCONNECTED:
            link.connected = False
            lost_at = time.monotonic()
            # Replies the peer sent before it went away may still sit in the socket:
            # give them a moment to be read before failing what is left.
            asyncio.get_running_loop().call_later(self.settings.disconnect_grace_s, self._peer_lost, link, lost_at)

    def _peer_lost(self, link: Link, lost_at: float) -> None:
        link.fail_pending(
            ActorDeadError(f"{link.ref.name} ({link.ref.endpoint}) disconnected: its process stopped or died"),
            sent_before=lost_at,
        )
        link.window.reset()
        if self.shared is not None:  # a dead peer never releases; a live one keeps what it mapped
            self.shared.reclaim(link)
