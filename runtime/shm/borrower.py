"""Borrowing: tensors that are views on segments peers lent, and their release.

For a message whose tensors lie in shared memory, `Borrower.open` maps each segment
(mappings are cached by name, so a pooled segment is mapped once) and returns byte
views of the places; the codec builds the tensors on them without a copy. Each loan
(one segment, one lease) gets an anchor: an array over the mapping that every view of
the loan keeps alive, with a finalizer. When the last tensor (or numpy array, or
slice) of a loan is freed, in whatever thread that happens, the finalizer queues
``(route, segment, lease)``; the event loop then sends each route one `SharedRelease`
with everything queued for it, so a receiver that keeps a tensor keeps its segment,
and one that drops it gives it back at once.

A mapping stays valid after its name is removed, so tensors survive their lender's
death or exit. The cache holds at most `cache_size` mappings, and about once a
second drops those whose segment was removed (the lender reclaimed it or exited), so
the memory of removed segments is freed once no tensor uses it.
"""

from __future__ import annotations

import asyncio
import mmap
import threading
import time
import weakref
from collections import OrderedDict, deque
from typing import Protocol

import numpy as np

from protocols.errors import ProtocolError
from protocols.shared_memory import SharedPlace, SharedRelease
from runtime.shm.segments import map_segment, segment_exists

CACHE_SIZE = 128
"""Most segment mappings a borrower keeps for reuse (tensors in use keep theirs anyway)."""
STALE_CHECK_S = 1.0
"""How often cached mappings are checked for segments removed by their lender."""


class ReleaseRoute(Protocol):
    """Where releases of one lender's loans go: back over the connection the loan came on."""

    def send_release(self, release: SharedRelease) -> None: ...


class Borrower:
    """Maps segments lent to this process and gives loans back when their tensors are freed.

    Must be created on the event loop that sends the releases.
    """

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self.cache_size = cache_size
        self._mappings: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._freed: deque[tuple[ReleaseRoute, str, int]] = deque()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._flush_scheduled = False
        self._checked_at = time.monotonic()
        self.released = 0
        """Loans given back so far."""

    def open(self, route: ReleaseRoute, places: list[SharedPlace]) -> list[memoryview]:
        """Writable byte views of `places` (one message's), released over `route` when freed.

        Raises:
            ProtocolError: a segment cannot be mapped (missing, not a troupe segment of
                this user, not a regular file) or a place lies beyond its segment's end.
        """
        anchors: dict[tuple[str, int], memoryview] = {}
        views = []
        for place in places:
            key = (place.segment, place.lease)
            whole = anchors.get(key)
            if whole is None:
                whole = anchors[key] = self._anchor(route, place)
            if place.offset + place.length > whole.nbytes:
                raise ProtocolError(
                    f"shared-memory place [{place.offset}, +{place.length}) lies beyond the end of segment "
                    f"{place.segment} ({whole.nbytes} bytes)"
                )
            views.append(whole[place.offset : place.offset + place.length])
        return views

    def close(self) -> None:
        """Drop the cached mappings (tensors still in use keep theirs) and send what is queued."""
        self._mappings.clear()
        self._flush()

    @property
    def mapped(self) -> list[str]:
        """Names of the segments whose mappings are cached."""
        return list(self._mappings)

    # ----------------------------------------------------------- internals
    def _anchor(self, route: ReleaseRoute, place: SharedPlace) -> memoryview:
        """A view of the whole segment whose last derived view, when freed, releases the loan."""
        anchor = np.frombuffer(self._mapping(place.segment), dtype=np.uint8)
        release = weakref.finalize(anchor, self._on_freed, route, place.segment, place.lease)
        release.atexit = False  # at interpreter exit there is no one left to tell
        return memoryview(anchor)

    def _mapping(self, name: str) -> mmap.mmap:
        now = time.monotonic()
        if now - self._checked_at > STALE_CHECK_S:
            self._checked_at = now
            for stale in [cached for cached in self._mappings if not segment_exists(cached)]:
                del self._mappings[stale]
        mapping = self._mappings.get(name)
        if mapping is not None:
            self._mappings.move_to_end(name)
            return mapping
        try:
            mapping = map_segment(name)
        except (OSError, ValueError) as error:
            raise ProtocolError(f"cannot map shared-memory segment {name}: {error}") from None
        self._mappings[name] = mapping
        while len(self._mappings) > self.cache_size:
            self._mappings.popitem(last=False)  # unmapped once no tensor uses it
        return mapping

    def _on_freed(self, route: ReleaseRoute, segment: str, lease: int) -> None:
        """A loan's last view was freed (any thread): queue its release, wake the loop."""
        self._freed.append((route, segment, lease))
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        try:
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._flush)
            else:
                self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the lender removes its segments when it stops
            pass

    def _flush(self) -> None:
        self._flush_scheduled = False  # first: a release queued from now on schedules another flush
        batches: dict[ReleaseRoute, tuple[list[str], list[int]]] = {}
        while self._freed:
            route, segment, lease = self._freed.popleft()
            segments, leases = batches.setdefault(route, ([], []))
            segments.append(segment)
            leases.append(lease)
        for route, (segments, leases) in batches.items():
            self.released += len(leases)
            route.send_release(SharedRelease(segments, leases))
