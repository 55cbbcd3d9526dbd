"""The envelope: one message on the wire.

A message is a list of frames. Frame 0 is a msgpack map, the header:

    schema_version  int       this module's SCHEMA_VERSION
    kind            str       which message type the payload is (see protocols.messages)
    message_id      str       unique per message
    correlation_id  str|None  for a reply: the message_id of the request
    trace_id        str|None  follows one batch through every role
    sender          str       the sending actor's name
    sent_at         float     unix time of sending, seconds
    deadline        float|None  unix time after which a request is useless
    expects_reply   bool      True for an ask, False for a tell or a reply
    credits         [int,int]|None  flow-control credit returned to the receiver
                                    (messages, bytes); see runtime.flow
    shm_host        str|None  the sender's shared-memory identity (runtime.shm): a peer
                              with the same identity may lend it tensors in shared
                              memory; nil when the sender takes none
    payload         bytes     the msgpack-packed payload (protocols.codec)
    tensors         list      one [dtype, shape, place, array] per tensor

A tensor's place is a frame index or a shared-memory place
``[segment, offset, length, lease]`` (protocols.shared_memory). Frames 1..n are the
raw bytes of the tensors placed in frames, one per descriptor, each used exactly
once. Decoding checks every field, every descriptor against its frame or place, and
the total size against a limit, and raises `ProtocolError` saying what was wrong.
Version 2 added `shm_host` and shared-memory places.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from protocols.codec import (
    NUMPY_KINDS,
    ObjectBudget,
    TORCH_DTYPES,
    TensorDescriptor,
    decode_payload,
    encode_payload,
    expected_nbytes,
    rebuild_tensor,
    unpack_limited,
)
from protocols.errors import ProtocolError
from protocols.shared_memory import Lend, OpenShared, parse_place, place_shared

SCHEMA_VERSION = 2
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
"""Largest message (all frames together) a receiver accepts unless configured otherwise."""
MAX_TENSOR_RANK = 64
MAX_TENSOR_ELEMENTS = 1 << 48
"""Upper bound on the elements a descriptor may claim, zero-sized dimensions counted as 1,
so even an empty tensor's shape stays within what torch and numpy can allocate."""
DEFAULT_MAX_HEADER_BYTES = 8 << 20
"""Largest header frame (structure and non-tensor payload) a receiver accepts. Decoding
msgpack can take tens of times its input in Python objects, so the header gets its own,
much smaller limit than the tensor frames; bulk data belongs in tensors. Text is cheap
to decode (one object per string), so the limit leaves room for a batch's prompts and
responses."""
DEFAULT_MAX_HEADER_OBJECTS = 1 << 21
"""Most msgpack values (containers and their items) a header and payload may decode to.
Bounds the decoding time of one message at roughly 0.2 s on one core, whatever its bytes
hold."""

_HEADER_FIELDS = frozenset(
    {
        "schema_version", "kind", "message_id", "correlation_id", "trace_id", "sender",
        "sent_at", "deadline", "expects_reply", "credits", "shm_host", "payload", "tensors",
    }
)


class _Ids:
    """Process-unique ids: a random prefix and a counter (cheaper than uuid4)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}-{next(self.counter):x}"


_ids = _Ids()


def new_id() -> str:
    """A new id, unique across processes and hosts with overwhelming probability."""
    return _ids.new()


@dataclass(slots=True)
class Envelope:
    """A decoded (or to-be-encoded) message with its routing fields.

    Treat it as immutable (it is not frozen only because frozen dataclasses are
    several times slower to build, and one is built for every message).

    `payload` holds plain Python values with tensors in place; `nbytes` is the size
    of the message, set by `encode_envelope` / `decode_envelope`: its frames and the
    bytes it placed in shared memory.
    """

    kind: str
    message_id: str
    sender: str
    sent_at: float
    payload: Any = None
    correlation_id: str | None = None
    trace_id: str | None = None
    deadline: float | None = None
    expects_reply: bool = False
    credits: tuple[int, int] | None = None
    shm_host: str | None = None
    nbytes: int = 0


def encode_envelope(envelope: Envelope, lend: Lend | None = None) -> tuple[list[Any], int]:
    """Frames ready for a multipart send, and the message's size in bytes.

    Args:
        envelope: the message.
        lend: offered the tensor buffers when given (runtime.shm for a peer on this
            host); those it places in shared memory travel as places, not frames.
    """
    packed, descriptors, buffers = encode_payload(envelope.payload, first_frame=1)
    tensor_bytes = sum(buffer.nbytes for buffer in buffers)
    if lend is not None and buffers:
        places = lend(buffers)
        if places is not None:
            descriptors, buffers = place_shared(descriptors, buffers, places)
    header = {
        "schema_version": SCHEMA_VERSION,
        "kind": envelope.kind,
        "message_id": envelope.message_id,
        "correlation_id": envelope.correlation_id,
        "trace_id": envelope.trace_id,
        "sender": envelope.sender,
        "sent_at": envelope.sent_at,
        "deadline": envelope.deadline,
        "expects_reply": envelope.expects_reply,
        "credits": list(envelope.credits) if envelope.credits is not None else None,
        "shm_host": envelope.shm_host,
        "payload": packed,
        "tensors": [descriptor.to_wire() for descriptor in descriptors],
    }
    header_bytes = msgpack.packb(header, use_bin_type=True)
    return [header_bytes, *buffers], len(header_bytes) + tensor_bytes


_NONE = type(None)
_NUMBER = (int, float)
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "kind": (str,),
    "message_id": (str,),
    "correlation_id": (str, _NONE),
    "trace_id": (str, _NONE),
    "sender": (str,),
    "sent_at": _NUMBER,
    "deadline": (*_NUMBER, _NONE),
    "expects_reply": (bool,),
    "credits": (list, _NONE),
    "shm_host": (str, _NONE),
    "payload": (bytes,),
    "tensors": (list,),
}
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "bool", list: "list", bytes: "bin", _NONE: "nil"}


def _check_header(header: Any) -> None:
    """Raise ProtocolError unless `header` has exactly the header fields, each of its type."""
    if type(header) is not dict:
        raise ProtocolError(f"header must be a msgpack map, got {type(header).__name__}")
    if header.keys() != _HEADER_FIELDS:
        missing = sorted(_HEADER_FIELDS - header.keys())
        unknown = sorted(map(str, header.keys() - _HEADER_FIELDS))[:8]
        raise ProtocolError(f"header fields are wrong: missing {missing}, unknown {unknown}")
    version = header["schema_version"]
    if version != SCHEMA_VERSION or type(version) is not int:
        raise ProtocolError(f"schema version {version!r:.20} is not supported: this process speaks version {SCHEMA_VERSION}")
    for name, allowed in _HEADER_TYPES.items():
        value = header[name]
        # bool is an int subclass: only `expects_reply` may be one.
        if type(value) not in allowed or (type(value) is bool and bool not in allowed):
            expected = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise ProtocolError(f"header field {name!r} must be {expected}, got {type(value).__name__}")
    if not header["kind"] or not header["message_id"]:
        raise ProtocolError("header fields 'kind' and 'message_id' must not be empty")
    if not math.isfinite(header["sent_at"]):
        raise ProtocolError("header field 'sent_at' must be finite")
    if header["deadline"] is not None and not math.isfinite(header["deadline"]):
        raise ProtocolError("header field 'deadline' must be finite or nil")
    credits = header["credits"]
    if credits is not None and not (
        len(credits) == 2 and all(type(c) is int and c >= 0 for c in credits)
    ):
        raise ProtocolError("header field 'credits' must be nil or [messages, bytes] of non-negative integers")


def _is_shared(raw: Any) -> bool:
    """Whether a raw descriptor places its tensor in shared memory rather than a frame."""
    return type(raw) is list and len(raw) == 4 and type(raw[2]) is list


def _parse_descriptor(raw: Any, position: int, frame_count: int) -> TensorDescriptor:
    where = f"tensor descriptor {position}"
    if not (isinstance(raw, list) and len(raw) == 4):
        raise ProtocolError(f"{where} must be [dtype, shape, frame, array], got {raw!r:.80}")
    dtype, shape, frame, array = raw
    if array == "torch" and type(dtype) is str:
        if dtype not in TORCH_DTYPES:
            raise ProtocolError(f"{where}: unknown torch dtype {dtype!r:.40}; known: {sorted(TORCH_DTYPES)}")
    elif array == "numpy" and type(dtype) is str:
        try:
            numpy_dtype = np.dtype(dtype)
        except (TypeError, ValueError, SyntaxError) as error:
            raise ProtocolError(f"{where}: unknown numpy dtype {dtype!r:.40}") from error
        if numpy_dtype.kind not in NUMPY_KINDS or numpy_dtype.fields is not None or numpy_dtype.subdtype is not None:
            raise ProtocolError(f"{where}: numpy dtype {dtype!r:.40} is not a plain bool/int/float/complex type")
    else:
        raise ProtocolError(f"{where}: needs a string dtype and array type 'torch' or 'numpy', got {dtype!r:.40}, {array!r:.40}")
    if not (
        type(shape) is list and len(shape) <= MAX_TENSOR_RANK and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"{where}: shape must be a list of at most {MAX_TENSOR_RANK} non-negative integers, got {shape!r:.80}")
    if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_ELEMENTS:
        raise ProtocolError(f"{where}: shape {shape!r:.80} claims more than {MAX_TENSOR_ELEMENTS} elements")
    if type(frame) is list:
        return TensorDescriptor(dtype, tuple(shape), parse_place(frame, where), array)
    if not (type(frame) is int and 1 <= frame < frame_count):
        raise ProtocolError(f"{where}: frame index {frame!r:.20} is outside 1..{frame_count - 1}")
    return TensorDescriptor(dtype, tuple(shape), frame, array)


def _byte_view(frame: Any) -> memoryview:
    view = memoryview(frame)
    if not view.c_contiguous:
        raise ProtocolError("a frame must be one contiguous block of bytes")
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def read_return_address(header_frame: Any) -> tuple[str, str, bool] | None:
    """(message_id, sender, expects_reply) of a header that could not be decoded, read
    without decoding the rest, so even a message refused for its size can be answered.

    Reads at most the header's first dozen entries, skipping values it does not need
    (a large payload is stepped over, not built). None when those fields are not there
    or not of their type: there is then no one to answer.
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0, strict_map_key=False)
    try:
        unpacker.feed(header_frame)
        entries = unpacker.read_map_header()
        found: dict[str, Any] = {}
        for _ in range(min(entries, len(_HEADER_FIELDS))):
            key = unpacker.unpack()
            if key in ("message_id", "sender", "expects_reply"):
                found[key] = unpacker.unpack()
            else:
                unpacker.skip()
    except Exception:  # msgpack raises many types; a header this broken has no return address
        return None
    message_id, sender, expects_reply = found.get("message_id"), found.get("sender"), found.get("expects_reply")
    if type(message_id) is not str or type(sender) is not str or type(expects_reply) is not bool:
        return None
    return message_id[:200], sender[:200], expects_reply


def decode_envelope(
    frames: list[Any],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_header_objects: int = DEFAULT_MAX_HEADER_OBJECTS,
    open_shared: OpenShared | None = None,
) -> Envelope:
    """Validate and decode a multipart message.

    Args:
        frames: the received frames; anything exposing the buffer protocol.
        max_message_bytes: reject messages whose frames (and shared-memory places)
            add up to more than this.
        max_header_bytes: reject messages whose header frame is larger than this.
        max_header_objects: reject messages whose header and payload decode to more
            msgpack values than this (checked while decoding, so the work stops there).
        open_shared: maps the shared-memory places of a message (runtime.shm), called
            once everything else has been checked; None refuses such messages.

    Raises:
        ProtocolError: saying what was wrong; never any other exception.
    """
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("a message needs at least a header frame")
    try:
        views = [_byte_view(frame) for frame in frames]
    except TypeError as error:
        raise ProtocolError(f"a frame is not a byte buffer: {error}") from error
    nbytes = sum(view.nbytes for view in views)
    if nbytes > max_message_bytes:
        raise ProtocolError(f"message of {nbytes} bytes exceeds the limit of {max_message_bytes} bytes")
    if views[0].nbytes > max_header_bytes:
        raise ProtocolError(
            f"header frame of {views[0].nbytes} bytes exceeds the limit of {max_header_bytes} bytes; "
            "send bulk data as tensors"
        )

    # A header of n bytes decodes, payload included, to at most 2n counted values (every
    # value takes at least one byte, and a byte counts at most twice: as a container's own
    # and as the first of its parent's items), so a small header cannot exceed the budget
    # and is decoded without counting.
    budget = ObjectBudget(max_header_objects) if 2 * views[0].nbytes > max_header_objects else None
    header = unpack_limited(views[0], budget=budget)
    _check_header(header)
    tensors: list[Any] = []
    if header["tensors"] or len(views) > 1:
        tensors, nbytes = _tensors(header["tensors"], views, max_message_bytes, open_shared)

    credits = header["credits"]
    deadline = header["deadline"]
    return Envelope(
        kind=header["kind"],
        message_id=header["message_id"],
        sender=header["sender"],
        sent_at=float(header["sent_at"]),
        payload=decode_payload(header["payload"], tensors, budget),
        correlation_id=header["correlation_id"],
        trace_id=header["trace_id"],
        deadline=float(deadline) if deadline is not None else None,
        expects_reply=header["expects_reply"],
        credits=(credits[0], credits[1]) if credits is not None else None,
        shm_host=header["shm_host"],
        nbytes=nbytes,
    )


def _tensors(
    raw_descriptors: list[Any], views: list[memoryview], max_message_bytes: int, open_shared: OpenShared | None
) -> tuple[list[Any], int]:
    """The message's tensors, in descriptor order, and the message's size (frames and places).

    Shared memory is opened last, once every descriptor and the total size have been
    checked, so a message refused for any other reason opens nothing.
    """
    shared_count = sum(1 for raw in raw_descriptors if _is_shared(raw))
    if len(raw_descriptors) - shared_count != len(views) - 1:
        in_memory = f" ({shared_count} more lie in shared memory)" if shared_count else ""
        raise ProtocolError(
            f"header describes {len(raw_descriptors) - shared_count} tensors{in_memory} but the message has "
            f"{len(views) - 1} tensor frames"
        )
    descriptors = [_parse_descriptor(raw, i, len(views)) for i, raw in enumerate(raw_descriptors)]
    framed = [descriptor.frame for descriptor in descriptors if type(descriptor.frame) is int]
    if len(set(framed)) != len(framed):
        raise ProtocolError("two tensor descriptors point at the same frame")
    nbytes = sum(view.nbytes for view in views)
    shared: list[int] = []
    for position, descriptor in enumerate(descriptors):
        expected = expected_nbytes(descriptor)
        where = f"tensor descriptor {position} ({descriptor.dtype}{list(descriptor.shape)}) needs {expected} bytes"
        if type(descriptor.frame) is int:
            held = views[descriptor.frame].nbytes
            if held != expected:
                raise ProtocolError(f"{where} but frame {descriptor.frame} holds {held}")
        else:
            if descriptor.frame.length != expected:
                raise ProtocolError(f"{where} but its shared-memory place holds {descriptor.frame.length}")
            shared.append(position)
            nbytes += expected
    if nbytes > max_message_bytes:
        raise ProtocolError(
            f"message of {nbytes} bytes (shared memory included) exceeds the limit of {max_message_bytes} bytes"
        )
    buffers: list[memoryview | None] = [views[d.frame] if type(d.frame) is int else None for d in descriptors]
    if shared:
        if open_shared is None:
            raise ProtocolError(
                f"tensor descriptor {shared[0]} points at shared memory, which this receiver does not take "
                "(it is on another host, or has shared memory turned off)"
            )
        try:
            opened = open_shared([descriptors[position].frame for position in shared])  # type: ignore[misc]
        except ProtocolError as error:
            error.message_bytes = nbytes
            raise
        for position, view in zip(shared, opened):
            buffers[position] = view
    return [rebuild_tensor(d, buffer) for d, buffer in zip(descriptors, buffers)], nbytes  # type: ignore[arg-type]
