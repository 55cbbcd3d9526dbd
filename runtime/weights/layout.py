"""Per-dtype buckets: planned from tensor names, dtypes and shapes alone.

The trainer plans the buckets before it gathers anything, so the announcement can go
out while the gathers run. Tensors are visited in the order the trainer gathers them;
each dtype has one open bucket, and a tensor that does not fit closes it. A bucket is
complete when its last tensor is packed, so buckets are sent in the order of their
last tensor: packing the next one overlaps sending this one.

A bucket travels in pieces (`plan_pieces`): slices of at most a chunk's size, listed
in the order the packer fills them, so the first piece goes out while the rest of its
bucket is still being packed. The announcement carries both, so a generator needs no
knowledge of the trainer's tensor order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from protocols.weights import BucketSpec, PieceSpec, TensorSpec


class LayoutError(ValueError):
    """The tensors cannot be laid out, or a layout does not describe this model."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return _numel(self.shape)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise LayoutError(f"{name!r} is not a torch dtype")
    return dtype


def plan_buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[BucketSpec]:
    """Lay `metas` out in per-dtype buckets of at most `bucket_bytes` (a larger tensor
    gets a bucket of its own), in the order the packer completes them."""
    if bucket_bytes <= 0:
        raise LayoutError(f"bucket size must be positive, got {bucket_bytes}")
    seen: set[str] = set()
    open_buckets: dict[torch.dtype, tuple[list[TensorSpec], list[int]]] = {}
    closed: list[tuple[int, BucketSpec]] = []  # (position of the last tensor, bucket)

    def close(dtype: torch.dtype) -> None:
        tensors, last = open_buckets.pop(dtype)
        numel = sum(_numel(spec.shape) for spec in tensors)
        closed.append((last[0], BucketSpec(dtype_name(dtype), numel, tensors)))

    for position, meta in enumerate(metas):
        if meta.name in seen:
            raise LayoutError(f"tensor {meta.name!r} appears twice (check the name mapping)")
        seen.add(meta.name)
        limit = max(1, bucket_bytes // meta.dtype.itemsize)
        if meta.dtype in open_buckets:
            tensors, _ = open_buckets[meta.dtype]
            used = sum(_numel(spec.shape) for spec in tensors)
            if used + meta.numel > limit:
                close(meta.dtype)
        tensors, last = open_buckets.setdefault(meta.dtype, ([], [position]))
        offset = sum(_numel(spec.shape) for spec in tensors)
        tensors.append(TensorSpec(meta.name, meta.shape, offset))
        last[0] = position
    for dtype in list(open_buckets):
        close(dtype)
    closed.sort(key=lambda item: item[0])
    return [bucket for _, bucket in closed]


def plan_pieces(metas: Sequence[TensorMeta], buckets: Sequence[BucketSpec], piece_bytes: int) -> list[PieceSpec]:
    """Cut every bucket into pieces of at most `piece_bytes` (at least one element each),
    in the order a packer walking `metas` completes them: a piece is complete once its
    bucket is filled up to the piece's end. Buckets of no elements have no pieces."""
    if piece_bytes <= 0:
        raise LayoutError(f"piece size must be positive, got {piece_bytes}")
    where = slots(buckets)
    cuts: list[list[PieceSpec]] = []
    for index, bucket in enumerate(buckets):
        step = max(1, piece_bytes // parse_dtype(bucket.dtype).itemsize)
        cuts.append([PieceSpec(index, start, min(step, bucket.numel - start)) for start in range(0, bucket.numel, step)])
    following = [0] * len(buckets)
    order: list[PieceSpec] = []
    for meta in metas:
        slot = where[meta.name]
        filled, pieces = slot.offset + slot.numel, cuts[slot.bucket]
        while following[slot.bucket] < len(pieces) and _end(pieces[following[slot.bucket]]) <= filled:
            order.append(pieces[following[slot.bucket]])
            following[slot.bucket] += 1
    if len(order) != sum(len(pieces) for pieces in cuts):
        raise LayoutError("the tensors do not fill the buckets they were planned into")
    return order


def whole_buckets(buckets: Sequence[BucketSpec]) -> list[PieceSpec]:
    """One piece per non-empty bucket, in bucket order (the order `plan_buckets` completes them)."""
    return [PieceSpec(index, 0, bucket.numel) for index, bucket in enumerate(buckets) if bucket.numel]


def _end(piece: PieceSpec) -> int:
    return piece.start + piece.numel


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def total_bytes(buckets: Iterable[BucketSpec]) -> int:
    return sum(bucket.numel * parse_dtype(bucket.dtype).itemsize for bucket in buckets)


@dataclass(frozen=True)
class Slot:
    bucket: int
    offset: int
    numel: int


def slots(buckets: Sequence[BucketSpec]) -> dict[str, Slot]:
    """Where each tensor goes: name -> bucket index, offset and size."""
    return {
        spec.name: Slot(index, spec.offset, _numel(spec.shape))
        for index, bucket in enumerate(buckets)
        for spec in bucket.tensors
    }


def allocate(bucket: BucketSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.empty(bucket.numel, dtype=parse_dtype(bucket.dtype), device=device)


def unpack(bucket: BucketSpec, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one received bucket, as views into it (no copy)."""
    for spec in bucket.tensors:
        yield spec.name, flat[spec.offset : spec.offset + _numel(spec.shape)].view(spec.shape)


def check_pieces(buckets: Sequence[BucketSpec], pieces: Sequence[PieceSpec]) -> None:
    """Raise LayoutError unless `pieces` cover every bucket exactly, each bucket's pieces in
    increasing order and without gaps (the order across buckets is the sender's choice)."""
    filled = [0] * len(buckets)
    for piece in pieces:
        if not 0 <= piece.bucket < len(buckets):
            raise LayoutError(f"a piece names bucket {piece.bucket}, the announcement has {len(buckets)}")
        if piece.numel < 1 or piece.start != filled[piece.bucket]:
            raise LayoutError(f"piece [{piece.start}, {_end(piece)}) of bucket {piece.bucket} does not follow "
                              f"the bucket's elements received so far ({filled[piece.bucket]})")
        filled[piece.bucket] = _end(piece)
    short = [f"bucket {index}: {filled[index]} of {bucket.numel}" for index, bucket in enumerate(buckets) if filled[index] != bucket.numel]
    if short:
        raise LayoutError(f"the pieces do not cover the buckets ({'; '.join(short[:5])})")


def check_layout(buckets: Sequence[BucketSpec], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise LayoutError naming every tensor of `buckets` that `expected` (the receiving
    model's names and shapes) does not have, or has with another shape. Dtypes may
    differ: loading casts (a float32 trainer can feed a bfloat16 generator)."""
    problems = []
    for bucket in buckets:
        parse_dtype(bucket.dtype)
        end = 0
        for spec in bucket.tensors:
            if spec.offset != end:
                problems.append(f"{spec.name}: offset {spec.offset}, expected {end}")
            end = spec.offset + _numel(spec.shape)
            if spec.name not in expected:
                problems.append(f"{spec.name}: not a tensor of this model")
                continue
            want = tuple(expected[spec.name])
            if tuple(spec.shape) != want:
                problems.append(f"{spec.name}: shape {tuple(spec.shape)}, the model has {want}")
        if end != bucket.numel:
            problems.append(f"a {bucket.dtype} bucket says {bucket.numel} elements, its tensors fill {end}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise LayoutError(f"the announced weights do not fit this model: {shown}")
