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
    payload         bytes     the msgpack-packed payload (protocols.codec)
    tensors         list      one [dtype, shape, frame, array] per tensor

Frames 1..n are the raw tensor bytes, one per descriptor, each used exactly once.
Decoding checks every field, every descriptor against its frame, and the total
size against a limit, and raises `ProtocolError` saying what was wrong.
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

SCHEMA_VERSION = 1
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
        "sent_at", "deadline", "expects_reply", "credits", "payload", "tensors",
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
    on the wire, set by `encode_envelope` / `decode_envelope`.
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
    nbytes: int = 0


def encode_envelope(envelope: Envelope) -> tuple[list[Any], int]:
    """Frames ready for a multipart send, and their total size in bytes."""
    packed, descriptors, buffers = encode_payload(envelope.payload, first_frame=1)
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
        "payload": packed,
        "tensors": [descriptor.to_wire() for descriptor in descriptors],
    }
    header_bytes = msgpack.packb(header, use_bin_type=True)
    nbytes = len(header_bytes) + sum(buffer.nbytes for buffer in buffers)
    return [header_bytes, *buffers], nbytes


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
) -> Envelope:
    """Validate and decode a multipart message.

    Args:
        frames: the received frames; anything exposing the buffer protocol.
        max_message_bytes: reject messages whose frames add up to more than this.
        max_header_bytes: reject messages whose header frame is larger than this.
        max_header_objects: reject messages whose header and payload decode to more
            msgpack values than this (checked while decoding, so the work stops there).

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

    budget = ObjectBudget(max_header_objects)
    header = unpack_limited(views[0], budget=budget)
    _check_header(header)
    raw_descriptors = header["tensors"]
    if len(raw_descriptors) != len(views) - 1:
        raise ProtocolError(
            f"header describes {len(raw_descriptors)} tensors but the message has {len(views) - 1} tensor frames"
        )
    tensors = []
    if raw_descriptors:
        descriptors = [_parse_descriptor(raw, i, len(views)) for i, raw in enumerate(raw_descriptors)]
        if len({descriptor.frame for descriptor in descriptors}) != len(descriptors):
            raise ProtocolError("two tensor descriptors point at the same frame")
        for position, descriptor in enumerate(descriptors):
            view = views[descriptor.frame]
            expected = expected_nbytes(descriptor)
            if view.nbytes != expected:
                raise ProtocolError(
                    f"tensor descriptor {position} ({descriptor.dtype}{list(descriptor.shape)}) needs {expected} "
                    f"bytes but frame {descriptor.frame} holds {view.nbytes}"
                )
            tensors.append(rebuild_tensor(descriptor, view))

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
        nbytes=nbytes,
    )
