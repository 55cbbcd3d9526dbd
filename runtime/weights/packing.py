"""The data plane of a publication: gather the model's tensors, pack them into
buckets, hand each piece to the sender thread as soon as it is packed.

Every trainer rank walks the model's tensors in the same order and gathers FSDP2
shards to full tensors one at a time (`pack`, on its compute thread), so every rank
takes part in every gather. Rank 0 also copies each full tensor into its slot of a
per-dtype bucket; each piece of a bucket (runtime.weights.layout.plan_pieces) goes
through a `BucketStream` to the thread that broadcasts it (runtime.weights.transfer)
as soon as the packer has filled it, so packing overlaps sending and only the first
piece's copy precedes the first broadcast. A full replica's tensors are then made
views of their slots (`InPlace`): later publications send straight from the model's
memory and copy nothing. For a delta version the packer marks, tensor by tensor,
which elements differ from the previous version (runtime.weights.delta) and encodes
each piece once it is complete. Which buffers outlive a publication is
runtime.weights.retention.

Nothing here knows the phases or the members: see runtime.weights.phases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from protocols.weights import BucketSpec, PieceSpec
from runtime.errors import ActorError
from runtime.weights import delta
from runtime.weights.layout import TensorMeta, allocate, slots, whole_buckets
from runtime.weights.transfer import send_pieces

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


def tensor_metas(named: Sequence[tuple[str, torch.Tensor]], send_dtype: torch.dtype | None = None) -> list[TensorMeta]:
    """Names, dtypes and shapes; with `send_dtype`, floating-point tensors travel in it."""
    return [
        TensorMeta(name, send_dtype if send_dtype is not None and tensor.is_floating_point() else tensor.dtype, tuple(tensor.shape))
        for name, tensor in named
    ]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor: an all-gather over the FSDP group for a DTensor shard (every rank
    must call it, in the same order), the tensor itself otherwise."""
    full_tensor = getattr(tensor, "full_tensor", None)
    full = full_tensor() if full_tensor is not None else tensor
    return full.detach()


class BucketStream:
    """Complete pieces (tensors, or encoded delta pieces), handed from the packer (compute
    thread) to the sender thread by index, in the announced order.

    With a capacity, the packer waits while that many pieces are waiting to be sent.
    Once closed (the transfer failed), `put` drops pieces so the packer, whose gathers
    the other ranks wait on, always runs to the end.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._ready: dict[int, Any] = {}
        self._closed = False
        self._changed = threading.Condition()

    def put(self, index: int, piece: Any) -> None:
        with self._changed:
            while self.capacity is not None and len(self._ready) >= self.capacity and not self._closed:
                self._changed.wait()
            if not self._closed:
                self._ready[index] = piece
                self._changed.notify_all()

    def take(self, index: int, deadline: float) -> Any:
        with self._changed:
            while index not in self._ready:
                if self._closed:
                    raise WeightsError("the bucket stream was closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"piece {index} was not packed before the transfer deadline")
                self._changed.wait(left)
            piece = self._ready.pop(index)
            self._changed.notify_all()
            return piece

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ready.clear()
            self._changed.notify_all()


class Packer:
    """Rank 0's packing of one publication: fills the buckets tensor by tensor and hands
    each piece to the stream once it is filled.

    A tensor that already lives in its slot (`InPlace` made it a view of it) is not
    copied: its piece is ready as soon as the walk reaches it.

    Args:
        buckets, pieces: the layout and the order pieces travel in.
        buffers: one per bucket to pack into, or None for fresh buckets.
        stream: where complete pieces go (None: pack only).
        device: where fresh buckets are allocated.
        is_delta: encode each piece as a delta of the previous version: of `previous`
            if given (then brought up to date piece by piece), else of what `buffers`
            held before this packing overwrote them (runtime.weights.delta).
        previous: the previous version's buffers, kept apart from `buffers`.
        in_place: makes a packed tensor a view of its slot, when it can.
    """

    def __init__(
        self, buckets: Sequence[BucketSpec], pieces: Sequence[PieceSpec], buffers: list[torch.Tensor] | None,
        stream: BucketStream | None, device: torch.device, is_delta: bool = False,
        previous: list[torch.Tensor] | None = None, in_place: InPlace | None = None,
    ) -> None:
        if is_delta and buffers is None:
            raise WeightsError("a delta needs the previous version's buffers to compare against")
        self.buckets, self.buffers, self.stream, self.device = buckets, buffers, stream, device
        self.is_delta, self.previous, self.in_place = is_delta, previous, in_place
        self.where = slots(buckets)
        self.queued: list[list[tuple[int, PieceSpec]]] = [[] for _ in buckets]
        """Per bucket: its pieces not handed over yet, (index in `pieces`, piece) in bucket order."""
        for index, piece in enumerate(pieces):
            self.queued[piece.bucket].append((index, piece))
        self.fresh: dict[int, torch.Tensor] = {}
        self.changed: dict[int, torch.Tensor] = {}
        """Per piece index: which of its elements changed (bool), while it is being filled."""
        self.copied = 0
        """Tensors copied into their slot (the rest were there already)."""

    def add(self, name: str, full: torch.Tensor) -> None:
        slot = self.where[name]
        flat = self._bucket(slot.bucket)
        target = flat[slot.offset : slot.offset + slot.numel]
        source = full.reshape(-1)
        there = source.dtype == target.dtype and source.numel() == target.numel() and source.data_ptr() == target.data_ptr()
        if there and slot.numel:
            if self.is_delta and self.previous is None:  # its old bits are gone: comparing would find no change
                raise WeightsError(f"{name} lives in its bucket already: a delta needs the previous version kept apart")
            if self.in_place is not None:
                self.in_place.found(name)
        if self.is_delta:
            if source.dtype != target.dtype:
                source = source.to(target.dtype)  # compare what travels
            old = target if self.previous is None else self.previous[slot.bucket][slot.offset : slot.offset + slot.numel]
            self._mark(slot.bucket, slot.offset, source, old)
        if not there and slot.numel:
            target.copy_(source)
            self.copied += 1
            if self.in_place is not None:
                self.in_place.adopt(name, target)
        queued = self.queued[slot.bucket]
        handed = False
        while queued and queued[0][1].start + queued[0][1].numel <= slot.offset + slot.numel:
            index, piece = queued.pop(0)
            self._hand_over(index, piece, flat)
            handed = True
        if not queued:
            self.fresh.pop(slot.bucket, None)
        if handed:
            time.sleep(0)  # let the sender thread take the GIL now, not at the interpreter's next switch (5 ms)

    def _bucket(self, bucket: int) -> torch.Tensor:
        if self.buffers is not None:
            return self.buffers[bucket]
        flat = self.fresh.get(bucket)
        if flat is None:
            flat = self.fresh[bucket] = allocate(self.buckets[bucket], self.device)
        return flat

    def _mark(self, bucket: int, offset: int, source: torch.Tensor, old: torch.Tensor) -> None:
        end = offset + source.numel()
        for index, piece in self.queued[bucket]:
            low, high = max(offset, piece.start), min(end, piece.start + piece.numel)
            if piece.start >= end:
                break
            if low >= high:
                continue
            changed = self.changed.get(index)
            if changed is None:
                changed = self.changed[index] = torch.empty(piece.numel, dtype=torch.bool, device=old.device)
            delta.mark_changed(source[low - offset : high - offset], old[low - offset : high - offset],
                               out=changed[low - piece.start : high - piece.start])

    def _hand_over(self, index: int, piece: PieceSpec, flat: torch.Tensor) -> None:
        values = flat[piece.start : piece.start + piece.numel]
        item: Any = values
        if self.is_delta:
            patch = None if self.previous is None else self.previous[piece.bucket][piece.start : piece.start + piece.numel]
            item = delta.encode(values, self.changed.pop(index), patch)
        if self.stream is not None:
            self.stream.put(index, item)


class InPlace:
    """Makes a full replica's parameters and buffers views of their bucket slots, so the
    next publications send straight from the model's memory and copy nothing.

    Only a plain tensor (not an FSDP shard) already in the dtype and on the device of its
    bucket moves; the Parameter object stays (``.data`` changes), so the optimizer's state
    and tied weights are kept. A tensor shared under two names moves to the first slot
    only; the second is copied at every publication.
    """

    def __init__(self, model: torch.nn.Module, name_map: NameMap | None = None) -> None:
        self.model = model
        self.owners: dict[str, tuple[str, torch.Tensor]] = {}
        """Generator name -> (trainer name, the model's Parameter or buffer)."""
        for name, tensor in model.state_dict(keep_vars=True).items():
            mapped = name_map(name) if name_map is not None else name
            if mapped is not None:
                self.owners[mapped] = (name, tensor)
        self.moved: set[int] = set()
        """id() of the tensors that are views of a slot now."""

    def found(self, name: str) -> None:
        """The tensor packed under `name` was a view of its slot already."""
        owner = self.owners.get(name)
        if owner is not None:
            self.moved.add(id(owner[1]))

    def adopt(self, name: str, slot: torch.Tensor) -> bool:
        """Make the model's tensor packed under `name` a view of `slot`, if it can be."""
        owner = self.owners.get(name)
        if owner is None:
            return False
        trainer_name, tensor = owner
        if (getattr(tensor, "full_tensor", None) is not None or id(tensor) in self.moved or tensor.dtype != slot.dtype
                or tensor.device != slot.device or tensor.numel() != slot.numel()):
            return False
        view = slot.view(tensor.shape)
        if isinstance(tensor, torch.nn.Parameter):
            tensor.data = view
        else:
            module_name, _, leaf = trainer_name.rpartition(".")
            module = self.model.get_submodule(module_name)
            if module._buffers.get(leaf) is not tensor:
                return False
            module._buffers[leaf] = view
            self.owners[name] = (trainer_name, view)
            tensor = view
        self.moved.add(id(tensor))
        return True


def pack(
    named: Sequence[tuple[str, torch.Tensor]],
    buckets: Sequence[BucketSpec],
    buffers: list[torch.Tensor] | None,
    stream: BucketStream | None,
    device: torch.device,
    pieces: Sequence[PieceSpec] | None = None,
    is_delta: bool = False,
    previous: list[torch.Tensor] | None = None,
    in_place: InPlace | None = None,
) -> tuple[float, int]:
    """Gather every tensor in order; with `buffers` or a `stream`, pack them into buckets
    (fresh ones when `buffers` is None) and hand each complete piece to `stream`
    (`pieces`: whole buckets by default; see `Packer` for the rest). Returns the seconds
    spent and the number of tensors copied into their slots."""
    started = time.monotonic()
    packer = None
    if buffers is not None or stream is not None:
        packer = Packer(buckets, whole_buckets(buckets) if pieces is None else pieces, buffers, stream, device,
                        is_delta, previous, in_place)
    for count, (name, tensor) in enumerate(named, start=1):
        full = gather(tensor)
        if packer is not None:  # a rank other than 0 takes part in the gathers only
            packer.add(name, full)
        if count % 16 == 0:
            time.sleep(0)  # a walk over tensors already in place is pure Python: let the event loop answer meanwhile
    return time.monotonic() - started, packer.copied if packer is not None else 0


send_all = send_pieces
"""Broadcast pieces 0..count-1 in order (runs on its own thread); see runtime.weights.transfer."""


def device_of(named: Sequence[tuple[str, torch.Tensor]]) -> torch.device:
    """Where the model's tensors live (a DTensor's local shard's device)."""
    if not named:
        return torch.device("cpu")
    tensor = named[0][1]
    local = getattr(tensor, "to_local", None)
    return (local() if local is not None else tensor).device
