"""`SharedMemory`: one actor's (or client's) side of the shared-memory transport.

It decides when shared memory is used and holds the two halves: the `Lender` of the
segments this actor sends in, and the `Borrower` of those its peers send in.

When: a message goes through shared memory only to a peer that has said it is on
this host. Every message's header carries its sender's identity (`host_identity`:
boot id, the /dev/shm it sees, user), or nil when the sender takes no shared memory
(turned off, or no usable /dev/shm). An actor lends to a peer whose last message
carried its own identity: an asker's request tells the replier, a reply or a credit
message tells the asker. So the first message to a peer goes by socket, as does
everything to a peer on another host, and never over ``inproc://``, which copies
nothing anyway. Below `RuntimeSettings.shared_memory_threshold_bytes` a tensor stays
a frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from protocols.shared_memory import SharedPlace, SharedRelease
from runtime.settings import RuntimeSettings
from runtime.shm.borrower import Borrower, ReleaseRoute
from runtime.shm.lender import Lender
from runtime.shm.segments import host_identity


class Lending:
    """What one message lends to one peer: the `lend` hook of `encode_envelope`, and the
    lease to give back (`cancel`) if the message never leaves."""

    __slots__ = ("lender", "peer", "name", "lease")

    def __init__(self, lender: Lender, peer: Hashable, name: str) -> None:
        self.lender = lender
        self.peer = peer
        self.name = name
        self.lease: int | None = None

    def __call__(self, buffers: list[memoryview]) -> list[SharedPlace | None] | None:
        lent = self.lender.lend(self.peer, self.name, buffers)
        if lent is None:
            return None
        places, self.lease = lent
        return places

    def cancel(self) -> None:
        """The message was not sent: its segment goes back to the pool."""
        if self.lease is not None:
            segment = self.lender.lease_segment(self.lease)
            if segment is not None:
                self.lender.release(self.peer, [segment], [self.lease])
            self.lease = None


class SharedMemory:
    """Lends large tensors to peers on this host and borrows theirs (see the module docstring).

    Create it on the actor's event loop. ``identity`` is None when shared memory is off.
    """

    def __init__(self, settings: RuntimeSettings, run: str) -> None:
        self.identity = host_identity() if settings.shared_memory else None
        self.lender: Lender | None = None
        self.borrower: Borrower | None = None
        if self.identity is not None:
            self.lender = Lender(
                run, settings.shared_memory_threshold_bytes, settings.shared_memory_max_lent_bytes_per_peer,
                settings.shared_memory_max_pooled_bytes,
            )
            self.borrower = Borrower()

    def lending(self, peer: Hashable, name: str, peer_identity: str | None) -> Lending | None:
        """A lend hook for one message to `peer` (called `name`), when that peer is on this host."""
        if self.lender is None or peer_identity is None or peer_identity != self.identity:
            return None
        return Lending(self.lender, peer, name)

    def open(self, route: ReleaseRoute, places: list[SharedPlace]) -> list[memoryview]:
        """Views of a received message's places, released over `route` (runtime.shm.borrower)."""
        assert self.borrower is not None, "open is only handed to decoding when shared memory is on"
        return self.borrower.open(route, places)

    def release(self, peer: Hashable, release: SharedRelease) -> None:
        """`peer` gave loans back."""
        if self.lender is not None:
            self.lender.release(peer, release.segments, release.leases)

    def reclaim(self, peer: Hashable) -> None:
        """`peer`'s connection is gone: remove what it held."""
        if self.lender is not None:
            self.lender.reclaim(peer)

    def reclaim_named(self, name: str) -> None:
        """The actor `name` left the run: remove what any connection of it held."""
        if self.lender is not None:
            self.lender.reclaim_named(name)

    async def close(self, grace_s: float) -> None:
        """Remove every segment this actor lent or pooled.

        A segment lent less than `grace_s` ago may belong to a message that has only just
        left (a reply sent while stopping): its receiver gets the rest of `grace_s` to map
        it before the name goes. Mapped segments stay valid for their tensors.
        """
        if self.lender is None or self.lender.closed:
            return
        assert self.borrower is not None
        self.borrower.close()
        newest = self.lender.newest_loan_age()
        try:
            if newest is not None and newest < grace_s:
                await asyncio.sleep(grace_s - newest)
        finally:
            self.lender.close()
