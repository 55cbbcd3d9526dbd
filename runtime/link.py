"""`Link`: this process's connection to one peer endpoint (runtime.outbox sends over it).

A link is one DEALER socket with a monitor: it carries requests out and replies and
credit back, holds the credit window towards the peer and the asks waiting for
replies, and tells its owner when the connection comes and goes. It also remembers
the peer's shared-memory identity and gives back the peer's loans (runtime.shm).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from protocols.envelope import Envelope, encode_envelope, new_id
from protocols.messages import to_payload
from protocols.shared_memory import OpenShared, SharedRelease
from runtime import transport
from runtime.flow import SendWindow
from runtime.security import Credentials
from runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class ActorRef:
    """Where an actor listens. `name` is used in logs and errors."""

    name: str
    endpoint: str


@dataclass
class PendingAsk:
    future: asyncio.Future[Envelope]
    sent_at: float  # time.monotonic() when sent


def _ignore_outcome(sent: asyncio.Future[None]) -> None:
    """A release that could not be sent needs no answer: its lender reclaims the loans when the link drops."""
    if not sent.cancelled():
        sent.exception()


class Link:
    """One DEALER connection to one peer, with its credit window and pending asks.

    Args:
        on_message: called with each message that comes back (replies, credit).
        on_connection: called with each monitor event number (connected, disconnected).
        on_error: called if servicing either socket fails.
        sender, shm_host: the owner's name and shared-memory identity, stamped on the
            releases this link sends.
    """

    def __init__(
        self,
        ref: ActorRef,
        settings: RuntimeSettings,
        on_message: Callable[[Link, list[zmq.Frame]], None],
        on_connection: Callable[[Link, int], None],
        on_error: Callable[[BaseException], None],
        keys: Credentials | None = None,
        sender: str = "",
        shm_host: str | None = None,
    ) -> None:
        self.ref = ref
        self.sender = sender
        self.shm_host = shm_host
        dealer = transport.connect_dealer(ref.endpoint, keys)
        watcher = transport.monitor(dealer)
        self.socket = transport.LoopSocket(dealer, lambda frames: on_message(self, frames), on_error)
        self.monitor = transport.LoopSocket(
            watcher, lambda frames: on_connection(self, transport.parse_event(frames)), on_error
        )
        self.window = SendWindow(settings.window_messages, settings.window_bytes)
        self.pending: dict[str, PendingAsk] = {}
        self.connected: bool | None = None
        """None until the first connection, then whether the peer is connected now."""
        self.refused: str | None = None
        """Why the peer refused the last handshake, if it did."""
        self.peer_shm_host: str | None = None
        """The peer's shared-memory identity, as its last message gave it (runtime.shm)."""
        self.inproc = ref.endpoint.startswith("inproc://")
        self.open_shared: OpenShared | None = None
        """Maps the shared-memory places of replies on this link (None: this link takes none)."""

    def fail_pending(self, error: Exception, sent_before: float | None = None) -> None:
        """Fail the asks waiting on this link (those sent before `sent_before`, if given)."""
        for message_id, pending in list(self.pending.items()):
            if sent_before is None or pending.sent_at <= sent_before:
                self.pending.pop(message_id, None)
                if not pending.future.done():
                    pending.future.set_exception(error)

    def send_release(self, release: SharedRelease) -> None:
        """Give loans back to the peer (nothing if the link is closed: its lender reclaims them)."""
        if self.socket.closed:
            return
        envelope = Envelope(kind=SharedRelease.KIND, message_id=new_id(), sender=self.sender, sent_at=time.time(),
                            payload=to_payload(release), shm_host=self.shm_host)
        try:
            waiter = self.socket.send(encode_envelope(envelope)[0])
        except zmq.ZMQError:  # the peer is gone; its lender reclaims the loans
            return
        if waiter is not None:
            waiter.add_done_callback(_ignore_outcome)

    def close(self) -> None:
        transport.close_monitored(self.socket, self.monitor)
