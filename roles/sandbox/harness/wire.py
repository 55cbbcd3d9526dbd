"""What crosses the pipes between the candidate and the judge: plain values and framed messages.

Standard library only (the harness runs before anything else is importable).
"""

import base64
import json
import os
import select
import struct
import time

ERROR_TEXT_LIMIT = 300
MESSAGE_LIMIT_BYTES = 16 << 20
"""Largest request or reply between the judge and the candidate."""
VALUE_DEPTH_LIMIT = 64
TIME_LIMIT_TEXT = "time limit exceeded"
"""What the judge writes for a program or test that ran out of time (the parent reads it)."""


def describe(error: BaseException) -> str:
    """One line naming the exception and its message, at most ``ERROR_TEXT_LIMIT`` characters."""
    try:
        message = str(error)
        text = type(error).__name__ + (f": {message}" if message else "")
    except BaseException:  # an exception's __str__ is program code and may raise anything
        text = "an exception that could not be printed"
    return text.replace("\n", " ")[:ERROR_TEXT_LIMIT]


# A value crossing between the candidate and the judge is JSON: None, bools, ints,
# floats (NaN and infinities as JSON's extensions), strings and lists as themselves;
# everything else a one-key object: {"tuple": [...]}, {"set": [...]},
# {"frozenset": [...]}, {"dict": [[key, value], ...]}, {"bytes": base64},
# {"complex": [real, imaginary]}, and {"ref": n} for an object the candidate keeps
# (anything whose type is not exactly one of these: its class, a function, an
# instance with an __eq__ of its own). The judge rebuilds values with its own types.

_PLAIN_SCALARS = (type(None), bool, int, float, str)


def encode(value, refs: list, depth: int = 0):
    """The candidate side: ``value`` as plain data, objects as references into ``refs``."""
    kind = type(value)
    if depth > VALUE_DEPTH_LIMIT:
        raise ValueError("value nested too deeply to send")
    if kind in _PLAIN_SCALARS:
        return value
    if kind is list:
        return [encode(item, refs, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(item, refs, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    refs.append(value)
    return {"ref": len(refs) - 1}


class RemoteError(Exception):
    """The candidate's code raised while the judge called it (the text is the candidate's)."""


class ChannelBroken(Exception):
    """The candidate stopped answering, answered garbage, or ran out of time."""


def decode(data, make_ref, depth: int = 0):
    """The judge side: rebuild a value from plain data with this process's own types."""
    if depth > VALUE_DEPTH_LIMIT:
        raise ChannelBroken("a value nested too deeply")
    kind = type(data)
    if kind in _PLAIN_SCALARS:
        return data
    if kind is list:
        return [decode(item, make_ref, depth + 1) for item in data]
    if kind is not dict or len(data) != 1:
        raise ChannelBroken(f"not a value: {kind.__name__}")
    (tag, body), = data.items()
    if tag in ("tuple", "set", "frozenset") and type(body) is list:
        items = [decode(item, make_ref, depth + 1) for item in body]
        try:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        except TypeError as error:  # an unhashable item in a set: not a value that exists
            raise ChannelBroken(f"a {tag} of unhashable items") from error
    if tag == "dict" and type(body) is list:
        pairs = [decode(pair, make_ref, depth + 1) for pair in body]
        if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
            raise ChannelBroken("a dict entry is not a pair")
        try:
            return {key: value for key, value in pairs}
        except TypeError as error:
            raise ChannelBroken("a dict with an unhashable key") from error
    if tag == "bytes" and type(body) is str:
        return base64.b64decode(body.encode("ascii"), validate=True)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    if tag == "ref" and type(body) is int:
        return make_ref(body)
    raise ChannelBroken(f"not a value: {{{tag!r}: ...}}")


def send(fd: int, message: dict, deadline=None) -> None:
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise ChannelBroken(TIME_LIMIT_TEXT)
        try:
            data = data[os.write(fd, data):]
        except OSError as error:
            raise ChannelBroken(f"the channel closed: {error.strerror}") from error


def receive(fd: int, deadline=None) -> dict:
    def read_exactly(count: int) -> bytes:
        chunks, left = [], count
        while left:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise ChannelBroken(TIME_LIMIT_TEXT)
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except OSError as error:
                raise ChannelBroken(f"the channel closed: {error.strerror}") from error
            if not chunk:
                raise ChannelBroken("the program's process ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack(">I", read_exactly(4))
    if size > MESSAGE_LIMIT_BYTES:
        raise ChannelBroken(f"a message of {size} bytes (limit {MESSAGE_LIMIT_BYTES})")
    try:
        message = json.loads(read_exactly(size))
    except ValueError as error:
        raise ChannelBroken("a message that is not JSON") from error
    if type(message) is not dict:
        raise ChannelBroken("a message that is not an object")
    return message

