"""Shared-memory places: where a tensor's bytes lie when they do not travel in a frame.

Between two processes on one host a large tensor need not cross the socket. Its
sender copies it into a segment under /dev/shm that the sender owns and lends, and
the tensor's descriptor names a place in that segment where it would otherwise name
a frame: ``[segment, offset, length, lease]``. The receiver maps the segment and
views the bytes; once it has freed every view it sends `SharedRelease` with the
lease, and the sender may reuse the segment. `runtime.shm` does all of that. This
module is only the wire form, so a place is checked like any other field before
anything is opened: a segment name that is not a troupe segment's (a path, "..",
another program's file) is refused here, with a `ProtocolError`.

A segment's name says who owns it, so a supervisor can remove a dead process's
segments without asking that process::

    troupe.<run>.<pid>.<token>.<number>

``<run>`` is the run's name reduced to letters, digits, ``_`` and ``-`` (at most 40
characters; ``run`` when there is none), ``<pid>`` the owner's process id,
``<token>`` 12 random hex digits per lender (so a recycled pid never makes a name that
a receiver may still have mapped), ``<number>`` counts the lender's segments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from protocols.codec import TensorDescriptor
from protocols.errors import ProtocolError
from protocols.messages import message

SEGMENT_PREFIX = "troupe."
PLACE_ALIGNMENT = 64
"""Every place starts at a multiple of this many bytes, so no dtype ever needs a copy
to be aligned (rebuild_tensor's rule)."""
MAX_PLACE_BYTES = 1 << 48
MAX_LEASE = (1 << 63) - 1

_RUN_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")
_SEGMENT_NAME = re.compile(
    r"troupe\.(?P<run>[A-Za-z0-9_-]{1,40})\.(?P<pid>[1-9][0-9]{0,9})\.(?P<token>[0-9a-f]{12})\.(?P<number>[0-9]{1,12})"
)


def run_label(run: str) -> str:
    """The run's name as it appears in segment names (``run`` when it has none)."""
    return _RUN_CHARACTERS.sub("-", run).strip("-")[:40] or "run"


def segment_name(run: str, pid: int, token: str, number: int) -> str:
    """The name of a lender's `number`-th segment (see the module docstring)."""
    name = f"{SEGMENT_PREFIX}{run_label(run)}.{pid}.{token}.{number}"
    if _SEGMENT_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a valid segment name: the token must be 12 lowercase hex digits")
    return name


def segment_owner(name: str) -> tuple[str, int] | None:
    """(run label, owner pid) of a troupe segment's name; None for any other name."""
    match = _SEGMENT_NAME.fullmatch(name)
    return (match["run"], int(match["pid"])) if match is not None else None


class SharedPlace(NamedTuple):
    """Where a tensor's bytes lie in a lent segment.

    Attributes:
        segment: the segment's name (a file directly under /dev/shm).
        offset: first byte, a multiple of `PLACE_ALIGNMENT`.
        length: bytes, exactly what the tensor's dtype and shape need.
        lease: the lender's number for this loan; the receiver gives it back in a
            `SharedRelease` once it has freed every view of the loan.
    """

    segment: str
    offset: int
    length: int
    lease: int

    def to_wire(self) -> list[Any]:
        return [self.segment, self.offset, self.length, self.lease]


def _bounded_int(value: Any, limit: int) -> bool:
    return type(value) is int and 0 <= value <= limit


def parse_place(raw: Any, where: str) -> SharedPlace:
    """A place from its wire form; ProtocolError naming what is wrong (nothing is opened)."""
    if not (type(raw) is list and len(raw) == 4):
        raise ProtocolError(f"{where}: a shared-memory place must be [segment, offset, length, lease], got {raw!r:.80}")
    segment, offset, length, lease = raw
    if type(segment) is not str or _SEGMENT_NAME.fullmatch(segment) is None:
        raise ProtocolError(
            f"{where}: {segment!r:.80} is not a troupe shared-memory segment "
            "(troupe.<run>.<pid>.<token>.<number>, directly under /dev/shm)"
        )
    if not (_bounded_int(offset, MAX_PLACE_BYTES) and offset % PLACE_ALIGNMENT == 0):
        raise ProtocolError(f"{where}: offset {offset!r:.20} must be a non-negative multiple of {PLACE_ALIGNMENT}")
    if not _bounded_int(length, MAX_PLACE_BYTES):
        raise ProtocolError(f"{where}: length {length!r:.20} must be an integer in 0..{MAX_PLACE_BYTES}")
    if not _bounded_int(lease, MAX_LEASE):
        raise ProtocolError(f"{where}: lease {lease!r:.20} must be a non-negative 63-bit integer")
    return SharedPlace(segment, offset, length, lease)


Lend = Callable[[list[memoryview]], "list[SharedPlace | None] | None"]
"""Offered a message's tensor buffers, puts some in shared memory: the place of each
buffer it took, None for those it left to frames (or None for all of them)."""
OpenShared = Callable[[list[SharedPlace]], list[memoryview]]
"""Maps shared-memory places to writable byte views of exactly their length, or raises
ProtocolError."""


def place_shared(
    descriptors: list[TensorDescriptor], buffers: list[memoryview], places: list[SharedPlace | None]
) -> tuple[list[TensorDescriptor], list[memoryview]]:
    """Point the descriptors of the buffers that went to shared memory at their places,
    and number the frames of the rest 1..k; returns the descriptors and the frames."""
    pointed, framed = [], []
    for descriptor, buffer, place in zip(descriptors, buffers, places):
        if place is None:
            framed.append(buffer)
            pointed.append(descriptor._replace(frame=len(framed)))
        else:
            pointed.append(descriptor._replace(frame=place))
    return pointed, framed


@message("troupe.shm_release")
class SharedRelease:  # receiver -> lender: every view of these loans is freed; their segments may be reused
    segments: list[str]
    leases: list[int]
    """``leases[i]`` is the loan of ``segments[i]`` being given back."""
