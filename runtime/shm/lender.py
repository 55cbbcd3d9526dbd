"""Lending: a message's large tensors, copied into one pooled segment, lent to one peer.

A sender copies every tensor buffer of at least `threshold` bytes into one segment
it owns (each at a 64-byte boundary) and lends the segment to the receiving peer
under a lease number; the message carries the places instead of the bytes. When the
receiver has freed the tensors it releases the lease, and the segment goes back to
the pool (per size class, powers of two) to carry a later message; beyond
`max_pooled` bytes of idle segments it is removed instead.

What bounds the memory: a peer may hold at most `max_lent_per_peer` bytes of loans at
once; past that its messages go as socket frames. A peer that is gone never releases:
`reclaim` removes what it held (by name: the tensors it may still hold stay valid, a
mapping outlives its name) and forgets the loans, so no segment is ever reused while
a receiver might still read it. `close` removes every segment of the lender.

Everything here runs on the owner's event loop thread.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from protocols.shared_memory import PLACE_ALIGNMENT, SharedPlace, segment_name
from runtime.shm.segments import Segment


class LenderStats(NamedTuple):
    """What a lender holds now."""

    lent: int
    """Segments lent and not yet released."""
    pooled: int
    """Idle segments kept for reuse."""
    lent_bytes: int
    pooled_bytes: int
    created: int
    """Segments created since the lender started (reuse keeps this from growing)."""


@dataclass
class _Loan:
    segment: Segment
    peer: Hashable
    lent_at: float  # time.monotonic()


@dataclass
class _Peer:
    name: str
    lent_bytes: int = 0
    leases: set[int] = field(default_factory=set)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // PLACE_ALIGNMENT) * PLACE_ALIGNMENT


class Lender:
    """Copies large tensor buffers into pooled segments this process owns and lends them.

    Args:
        run: the run's name (part of every segment's name).
        threshold: buffers of at least this many bytes go to shared memory.
        max_lent_per_peer: most bytes of segments one peer may hold at once.
        max_pooled: most bytes of idle segments kept for reuse.
    """

    def __init__(self, run: str, threshold: int, max_lent_per_peer: int, max_pooled: int) -> None:
        self.run = run
        self.threshold = threshold
        self.smallest = 1 << max(threshold - 1, 1).bit_length()
        self.max_lent_per_peer = max_lent_per_peer
        self.max_pooled = max_pooled
        self.token = os.urandom(6).hex()
        self.pid = os.getpid()
        self._numbers = itertools.count()
        self._leases = itertools.count(1)
        self._pool: dict[int, list[Segment]] = {}
        self._pooled_bytes = 0
        self._loans: dict[int, _Loan] = {}
        self._peers: dict[Hashable, _Peer] = {}
        self.created = 0
        self.closed = False

    def size_class(self, nbytes: int) -> int:
        """The segment size that carries `nbytes`: the smallest power of two holding it."""
        return max(self.smallest, 1 << max(nbytes - 1, 1).bit_length())

    def lend(self, peer: Hashable, name: str, buffers: list[memoryview]) -> tuple[list[SharedPlace | None], int] | None:
        """Copy the large buffers into one segment lent to `peer` (called `name`).

        Returns:
            the place of each buffer (None for those left to frames) and the lease;
            None when nothing goes to shared memory (no buffer is large enough, the
            peer holds its limit, or no segment could be made).
        """
        large = [i for i, buffer in enumerate(buffers) if buffer.nbytes >= self.threshold]
        if not large or self.closed:
            return None
        offsets, end = [], 0
        for i in large:
            offsets.append(end)
            end += _aligned(buffers[i].nbytes)
        size = self.size_class(end)
        holder = self._peers.get(peer)
        if (holder.lent_bytes if holder is not None else 0) + size > self.max_lent_per_peer:
            return None
        segment = self._take(size)
        if segment is None:
            return None
        view = segment.view
        places: list[SharedPlace | None] = [None] * len(buffers)
        lease = next(self._leases)
        for i, offset in zip(large, offsets):
            nbytes = buffers[i].nbytes
            view[offset : offset + nbytes] = buffers[i]
            places[i] = SharedPlace(segment.name, offset, nbytes, lease)
        self._loans[lease] = _Loan(segment, peer, time.monotonic())
        holder = self._peers.setdefault(peer, _Peer(name))
        holder.lent_bytes += size
        holder.leases.add(lease)
        return places, lease

    def release(self, peer: Hashable, segments: Iterable[str], leases: Iterable[int]) -> int:
        """`peer` freed these loans: their segments go back to the pool. Loans that are not
        this peer's (forged, or reclaimed already) are ignored. Returns how many were released."""
        released = 0
        for name, lease in zip(segments, leases):
            loan = self._loans.get(lease)
            if loan is None or loan.peer != peer or loan.segment.name != name:
                continue
            self._end_loan(lease, loan)
            self._give_back(loan.segment)
            released += 1
        return released

    def reclaim(self, peer: Hashable) -> int:
        """`peer` is gone: remove the segments it holds (never to be reused) and forget its
        loans. Returns how many there were."""
        holder = self._peers.get(peer)
        if holder is None:
            return 0
        leases = list(holder.leases)
        for lease in leases:
            loan = self._loans[lease]
            self._end_loan(lease, loan)
            loan.segment.unlink()
        return len(leases)

    def reclaim_named(self, name: str) -> int:
        """Reclaim from every peer called `name` (its process left the registry)."""
        return sum(self.reclaim(peer) for peer, holder in list(self._peers.items()) if holder.name == name)

    def newest_loan_age(self) -> float | None:
        """Seconds since the most recent loan still outstanding was made (None: none is)."""
        if not self._loans:
            return None
        return time.monotonic() - max(loan.lent_at for loan in self._loans.values())

    def close(self) -> None:
        """Remove every segment, lent or idle; later lends put nothing in shared memory."""
        self.closed = True
        for loan in self._loans.values():
            loan.segment.unlink()
        for segments in self._pool.values():
            for segment in segments:
                segment.unlink()
        self._loans.clear()
        self._peers.clear()
        self._pool.clear()
        self._pooled_bytes = 0

    @property
    def stats(self) -> LenderStats:
        lent_bytes = sum(holder.lent_bytes for holder in self._peers.values())
        pooled = sum(len(segments) for segments in self._pool.values())
        return LenderStats(len(self._loans), pooled, lent_bytes, self._pooled_bytes, self.created)

    @property
    def loans(self) -> dict[int, str]:
        """lease -> name of the segment lent under it, for every loan outstanding."""
        return {lease: loan.segment.name for lease, loan in self._loans.items()}

    def lease_segment(self, lease: int) -> str | None:
        """The name of the segment lent under `lease`, while it is lent."""
        loan = self._loans.get(lease)
        return loan.segment.name if loan is not None else None

    # ----------------------------------------------------------- internals
    def _take(self, size: int) -> Segment | None:
        """An idle segment of `size` bytes from the pool, or a new one (None if none can be made)."""
        idle = self._pool.get(size)
        if idle:
            self._pooled_bytes -= size
            return idle.pop()
        name = segment_name(self.run, self.pid, self.token, next(self._numbers))
        try:
            segment = Segment(name, size)
        except OSError:  # /dev/shm is full or unusable: this message goes by socket instead
            return None
        self.created += 1
        return segment

    def _give_back(self, segment: Segment) -> None:
        if self.closed or self._pooled_bytes + segment.size > self.max_pooled:
            segment.unlink()
            return
        self._pool.setdefault(segment.size, []).append(segment)
        self._pooled_bytes += segment.size

    def _end_loan(self, lease: int, loan: _Loan) -> None:
        del self._loans[lease]
        holder = self._peers[loan.peer]
        holder.leases.discard(lease)
        holder.lent_bytes -= loan.segment.size
        if not holder.leases:
            del self._peers[loan.peer]
