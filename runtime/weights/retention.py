"""What trainer rank 0 keeps between publications.

The live buffers: one flat buffer per bucket, which publications pack into and send
from, reused while the layout and device stay the same. Once `InPlace` has made them
the model's own memory, training changes them; until then they change only when a
publication packs into them.

The kept copy: the last published version's exact bytes, which catch-ups of joining
generators (with ``keep_last``) are sent from and which a delta is computed against
(with ``delta``). While the live buffers are not the model's memory they are that copy
themselves, and nothing is copied. Once they are, a snapshot is kept apart: patched
piece by piece while a delta is encoded, or, after a full version, copied on the
compute thread once the transfer is over, so the copy delays neither the transfer nor
the acknowledgement, and still precedes the next training step (the compute thread
runs calls in order). A retry within the publication sends from the live buffers: no
training step runs while a publication does.

A catch-up reads the kept copy for as long as it sends it: meanwhile no publication
writes into those buffers (it takes new ones, and sends a full version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from protocols.weights import BucketSpec, PieceSpec
from runtime.compute import ComputeWorker
from runtime.weights.layout import allocate
from runtime.weights.packing import InPlace, NameMap


@dataclass
class Retained:
    """A published version's buckets, as sent to catch-ups and retries."""

    version: int
    buckets: list[BucketSpec]
    pieces: list[PieceSpec]
    buffers: list[torch.Tensor]
    device: torch.device
    ready: asyncio.Future[None] | None = None
    """The snapshot copy still under way (await it before reading)."""

    def take(self, index: int, deadline: float) -> torch.Tensor:
        piece = self.pieces[index]
        return self.buffers[piece.bucket][piece.start : piece.start + piece.numel]

    def is_ready(self) -> bool:
        return self.ready is None or (self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None)


@dataclass
class Plan:
    """Where one publication packs, and what it may be a delta of."""

    buffers: list[torch.Tensor]
    """The live buffers to pack into and send from."""
    base: int | None
    """The version a delta can be computed against (None: none)."""
    previous: list[torch.Tensor] | None
    """That version's buffers when they are not `buffers` (a snapshot the delta patches)."""
    in_place: InPlace | None


class Retention:
    """Trainer rank 0's live buffers and kept copy (see the module docstring).

    Args:
        keep: keep the last version for catch-ups (``keep_last``).
        delta: keep it as the base of deltas.
        in_place: let the live buffers become the model's memory (``send_in_place``).
    """

    def __init__(self, keep: bool, delta: bool, in_place: bool) -> None:
        self.keep, self.delta, self.in_place = keep, delta, in_place
        self._live: tuple[list[BucketSpec], torch.device, list[torch.Tensor]] | None = None
        self._live_version: int | None = None
        """The version the live buffers hold, while they are not the model's memory."""
        self._moved: InPlace | None = None
        self._movable: bool | None = None
        """Whether the last publication found the model's tensors in (or moved them into) their slots."""
        self._kept: Retained | None = None
        self._readers: dict[int, int] = {}
        """id(buffers) -> catch-ups reading them."""

    @property
    def retains(self) -> bool:
        """Whether publications pack into buffers that outlive them (for ``send_in_place``
        alone, only while the model's tensors can move into them)."""
        return self.keep or self.delta or (self.in_place and self._movable is not False)

    @property
    def retained(self) -> Retained | None:
        """The copy catch-ups are sent from (only with ``keep``)."""
        return self._kept if self.keep else None

    def plan(self, model: torch.nn.Module, name_map: NameMap | None, buckets: list[BucketSpec], device: torch.device,
             published: int) -> Plan:
        """The buffers for the next publication and its delta base (`published`: the last
        version sent). Whatever the publication will overwrite stops being kept now."""
        live = self._live
        if live is None or live[0] != buckets or live[1] != device or (not self._is_model_memory() and id(live[2]) in self._readers):
            live = self._live = (buckets, device, [allocate(bucket, device) for bucket in buckets])
            self._live_version, self._moved = None, None
        if self.in_place and (self._moved is None or self._moved.model is not model):
            self._moved = InPlace(model, name_map)
        base, previous = None, None
        kept = self._kept
        if not self._is_model_memory():
            if self._live_version == published:
                base = published
            self._live_version = None
            if kept is not None and kept.buffers is live[2]:
                self._kept = None  # being overwritten
        elif (kept is not None and kept.version == published and kept.is_ready() and kept.buckets == buckets
              and kept.device == device and id(kept.buffers) not in self._readers):
            base, previous = published, kept.buffers
        if not self.delta:
            base, previous = None, None
        return Plan(live[2], base, previous, self._moved if self.in_place else None)

    def patching(self, plan: Plan) -> None:
        """The publication will patch the plan's previous buffers: they are no longer kept."""
        if plan.previous is not None and self._kept is not None and self._kept.buffers is plan.previous:
            self._kept = None

    def live(self, version: int, pieces: list[PieceSpec]) -> Retained:
        """The live buffers as this publication's version (for a retry within it)."""
        assert self._live is not None
        return Retained(version, self._live[0], pieces, self._live[2], self._live[1])

    def published(self, plan: Plan, version: int, pieces: list[PieceSpec], patched: bool, compute: ComputeWorker) -> None:
        """The publication is over: keep its version (`patched`: the plan's previous
        buffers were brought up to it while a delta was encoded)."""
        assert self._live is not None
        buckets, device, live = self._live
        self._movable = self._is_model_memory()
        if not self._is_model_memory():
            self._live_version = version
            self._kept = Retained(version, buckets, pieces, live, device) if self.keep or self.delta else None
        elif patched and plan.previous is not None:
            self._kept = Retained(version, buckets, pieces, plan.previous, device)
        elif self.keep or self.delta:
            old = self._kept
            reuse = old is not None and old.buckets == buckets and old.device == device and old.buffers is not live
            snapshot = old.buffers if reuse and id(old.buffers) not in self._readers else [allocate(b, device) for b in buckets]  # type: ignore[union-attr]
            self._kept = Retained(version, buckets, pieces, snapshot, device, ready=compute.submit(_copy_all, snapshot, live))
        else:
            self._kept = None
        if not self.retains:  # the model could not move: later publications pack into fresh buckets
            self._live, self._moved = None, None

    def _is_model_memory(self) -> bool:
        return self._moved is not None and bool(self._moved.moved)

    def hold(self, buffers: list[torch.Tensor]) -> None:
        """A catch-up starts reading `buffers`: no publication writes into them until `release`."""
        self._readers[id(buffers)] = self._readers.get(id(buffers), 0) + 1

    def release(self, buffers: list[torch.Tensor]) -> None:
        left = self._readers.pop(id(buffers)) - 1
        if left:
            self._readers[id(buffers)] = left

    def clear(self) -> None:
        """Let the buffers go (the publisher is closing); the model keeps its own memory."""
        self._live, self._kept, self._live_version = None, None, None


def _copy_all(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)
