"""The wire of one delivery: the announced pieces, broadcast in order.

A full version sends each piece as one broadcast of its elements. A delta version
(runtime.weights.delta) sends each piece as a header broadcast, then its payload unless
nothing changed; the receiver writes a FULL piece straight into its target and patches
a delta into its copy of the base version. Both loops run on a thread of their own and
every broadcast is bounded by the transfer's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from protocols.weights import PieceSpec
from runtime.weights import delta
from runtime.weights.group import BroadcastGroup

Take = Callable[[int, float], "torch.Tensor | delta.EncodedPiece"]
"""``take(index, deadline)``: piece `index` as it travels (a tensor, or an encoded delta
piece), complete, by `deadline` (time.monotonic())."""


@dataclass
class SendStats:
    sent_bytes: int = 0
    """Bytes broadcast, headers included."""
    delta_bytes: int = 0
    """Full size of the pieces that travelled as deltas (INDICES, BITMAP or unchanged)."""


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def send_pieces(group: BroadcastGroup, count: int, take: Take, deadline: float) -> SendStats:
    """Broadcast pieces 0..count-1 from rank 0, in order."""
    stats = SendStats()
    for index in range(count):
        item = take(index, deadline)
        if isinstance(item, delta.EncodedPiece):
            group.broadcast(item.header, _left(deadline))
            if item.kind != delta.FULL:
                stats.delta_bytes += item.numel * item.itemsize
            if item.payload is not None and item.payload.numel():
                group.broadcast(item.payload, _left(deadline))
            stats.sent_bytes += item.nbytes
        elif item.numel():
            group.broadcast(item, _left(deadline))
            stats.sent_bytes += item.numel() * item.element_size()
    return stats


class Scratch:
    """A reusable byte buffer for received delta payloads (grown on demand)."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, nbytes: int, device: torch.device) -> torch.Tensor:
        buffer = self._buffer
        if buffer is None or buffer.numel() < nbytes or buffer.device != device:
            buffer = self._buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return buffer[:nbytes]


def receive_pieces(
    group: BroadcastGroup,
    pieces: Sequence[PieceSpec],
    target: Sequence[torch.Tensor],
    deadline: float,
    *,
    is_delta: bool = False,
    base: Sequence[torch.Tensor] | None = None,
    scratch: Scratch | None = None,
    on_piece: Callable[[int], None] | None = None,
) -> None:
    """Receive every piece into `target` (one flat buffer per bucket).

    Args:
        is_delta: the version travels as a delta: `target` must hold the base version's
            bytes, or `base` must (then each patched piece is first copied from it).
        base: the base version's buffers when they are not `target` itself.
        scratch: where delta payloads land before they are applied.
        on_piece: called with each piece's index once it is in place.

    Raises:
        delta.DeltaError: a header that does not fit its piece (the group is then out of step).
    """
    header = torch.empty(delta.HEADER_NUMEL, dtype=torch.int64, device=target[0].device) if target else None
    scratch = scratch or Scratch()
    for index, piece in enumerate(pieces):
        flat = target[piece.bucket][piece.start : piece.start + piece.numel]
        if not is_delta:
            group.broadcast(flat, _left(deadline))
        else:
            assert header is not None
            group.broadcast(header, _left(deadline))
            kind, count = (int(value) for value in header.tolist())
            if kind == delta.FULL:
                group.broadcast(flat, _left(deadline))
            else:
                if not 0 <= count <= piece.numel:
                    raise delta.DeltaError(f"piece {index} says {count} changes of {piece.numel} elements")
                if base is not None:
                    flat.copy_(base[piece.bucket][piece.start : piece.start + piece.numel])
                nbytes = delta.payload_nbytes(kind, piece.numel, count, flat.element_size())
                if nbytes:
                    payload = scratch.take(nbytes, flat.device)
                    group.broadcast(payload, _left(deadline))
                    delta.apply(kind, count, payload, flat)
        if on_piece is not None:
            on_piece(index)
