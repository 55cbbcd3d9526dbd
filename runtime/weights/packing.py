"""The data plane of a publication: gather the model's tensors, pack them into
buckets, hand complete buckets to the sender thread.

Every trainer rank walks the model's tensors in the same order and gathers FSDP2
shards to full tensors one at a time (`pack`, on its compute thread), so every rank
takes part in every gather. Rank 0 also copies each full tensor into its slot of a
per-dtype bucket; a complete bucket goes through a `BucketStream` to the thread that
broadcasts it (`send_all`) while packing goes on. With retention, buckets are packed
into buffers that outlive the publication (`BufferPool`), so a generator that joins
later is caught up from them (`Retained`).

Nothing here knows the phases or the members: see runtime.weights.phases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from protocols.weights import BucketSpec
from runtime.errors import ActorError
from runtime.weights import group as groups
from runtime.weights.layout import TensorMeta, allocate, slots

NameMap = Callable[[str], "str | None"]
"""Turns a trainer tensor name into the generator's name, or None to leave it out."""


class WeightsError(ActorError):
    """A publication or a catch-up could not be carried out."""


def named_tensors(model: torch.nn.Module, name_map: NameMap | None = None) -> list[tuple[str, torch.Tensor]]:
    """The model's state (parameters and persistent buffers) under generator names, in a
    fixed order; FSDP2 shards stay sharded (DTensors) until `gather`."""
    named = []
    for name, tensor in model.state_dict().items():
        mapped = name_map(name) if name_map is not None else name
        if mapped is not None:
            named.append((mapped, tensor))
    return named


def tensor_metas(named: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in named]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor: an all-gather over the FSDP group for a DTensor shard (every rank
    must call it, in the same order), the tensor itself otherwise."""
    full_tensor = getattr(tensor, "full_tensor", None)
    full = full_tensor() if full_tensor is not None else tensor
    return full.detach()


class BucketStream:
    """Complete buckets, handed from the packer (compute thread) to the sender thread.

    With a capacity, the packer waits while that many buckets are waiting to be sent
    (two: double buffering). Once closed (the transfer failed), `put` drops buckets so
    the packer, whose gathers the other ranks wait on, always runs to the end.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._ready: dict[int, torch.Tensor] = {}
        self._closed = False
        self._changed = threading.Condition()

    def put(self, index: int, flat: torch.Tensor) -> None:
        with self._changed:
            while self.capacity is not None and len(self._ready) >= self.capacity and not self._closed:
                self._changed.wait()
            if not self._closed:
                self._ready[index] = flat
                self._changed.notify_all()

    def take(self, index: int, deadline: float) -> torch.Tensor:
        with self._changed:
            while index not in self._ready:
                if self._closed:
                    raise WeightsError("the bucket stream was closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"bucket {index} was not packed before the transfer deadline")
                self._changed.wait(left)
            flat = self._ready.pop(index)
            self._changed.notify_all()
            return flat

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ready.clear()
            self._changed.notify_all()


def pack(
    named: Sequence[tuple[str, torch.Tensor]],
    buckets: Sequence[BucketSpec],
    buffers: list[torch.Tensor] | None,
    stream: BucketStream | None,
    device: torch.device,
) -> float:
    """Gather every tensor in order; with `buffers` or a `stream`, pack them into buckets
    (fresh ones when `buffers` is None) and hand each complete bucket to `stream`.
    Returns the seconds spent."""
    started = time.monotonic()
    where = slots(buckets)
    remaining = [len(bucket.tensors) for bucket in buckets]
    fresh: dict[int, torch.Tensor] = {}
    for name, tensor in named:
        full = gather(tensor)
        if buffers is None and stream is None:
            continue  # a rank other than 0: it takes part in the gathers only
        slot = where[name]
        if buffers is not None:
            flat = buffers[slot.bucket]
        else:
            flat = fresh.get(slot.bucket)
            if flat is None:
                flat = fresh[slot.bucket] = allocate(buckets[slot.bucket], device)
        flat[slot.offset : slot.offset + slot.numel].copy_(full.reshape(-1))
        remaining[slot.bucket] -= 1
        if remaining[slot.bucket] == 0:
            fresh.pop(slot.bucket, None)
            if stream is not None:
                stream.put(slot.bucket, flat)
    return time.monotonic() - started


def send_all(group: groups.BroadcastGroup, count: int, take: Callable[[int, float], torch.Tensor], deadline: float) -> None:
    """Broadcast buckets 0..count-1 in order (runs on its own thread)."""
    for index in range(count):
        flat = take(index, deadline)
        if flat.numel():
            group.broadcast(flat, max(0.001, deadline - time.monotonic()))


# ------------------------------------------------------------------- retained buffers
@dataclass
class Retained:
    """A published version's buckets, kept to catch up generators that join later."""

    version: int
    buckets: list[BucketSpec]
    buffers: list[torch.Tensor]
    device: torch.device

    def take(self, index: int, deadline: float) -> torch.Tensor:
        return self.buffers[index]


class BufferPool:
    """The buffers publications pack into when versions are retained: reused while the
    bucket layout and device stay the same (no allocation per publication), and never
    overwritten while a catch-up is still reading them."""

    def __init__(self) -> None:
        self._current: tuple[list[BucketSpec], list[torch.Tensor], torch.device] | None = None
        self._readers: dict[int, int] = {}
        """id(buffers) -> catch-ups reading them."""

    def buffers_for(self, buckets: list[BucketSpec], device: torch.device) -> list[torch.Tensor]:
        """Buffers for one bucket each: the current ones if they fit and nobody reads them, else new ones."""
        current = self._current
        stale = current is None or current[0] != buckets or current[2] != device
        if stale or id(current[1]) in self._readers:  # type: ignore[index]
            current = self._current = (buckets, [allocate(bucket, device) for bucket in buckets], device)
        return current[1]

    def hold(self, buffers: list[torch.Tensor]) -> None:
        """A catch-up starts reading `buffers`: no publication packs into them until `release`."""
        self._readers[id(buffers)] = self._readers.get(id(buffers), 0) + 1

    def release(self, buffers: list[torch.Tensor]) -> None:
        left = self._readers.pop(id(buffers)) - 1
        if left:
            self._readers[id(buffers)] = left

    def clear(self) -> None:
        """Let the buffers go (the publisher is closing)."""
        self._current = None


def device_of(named: Sequence[tuple[str, torch.Tensor]]) -> torch.device:
    """Where the model's tensors live (a DTensor's local shard's device)."""
    if not named:
        return torch.device("cpu")
    tensor = named[0][1]
    local = getattr(tensor, "to_local", None)
    return (local() if local is not None else tensor).device
