"""What the current handler is handling, carried through asyncio's context.

A handler runs with its incoming message set here. Everything it sends (and every
task it starts, since tasks copy the context):

* carries the same trace id, so one batch can be followed through every role;
* gets a message id derived from the incoming one (``<incoming id>/<n>`` for the
  n-th send), so handling the same message again (after a re-delivery) sends
  messages with the same ids, which their receivers recognise as duplicates.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from protocols.envelope import new_id

MAX_DERIVED_ID_LENGTH = 160
"""Derived ids grow by one step per hop; past this length they are hashed (still deterministic)."""


@dataclass
class Handling:
    """The message a handler is handling."""

    message_id: str
    trace_id: str | None
    sends: Iterator[int] = field(default_factory=itertools.count)


current_handling: ContextVar[Handling | None] = ContextVar("troupe_handling", default=None)
current_trace_id: ContextVar[str | None] = ContextVar("troupe_trace_id", default=None)


def trace_id_for_send() -> str:
    """The current trace id, or a new one when this send starts a trace."""
    trace_id = current_trace_id.get()
    return trace_id if trace_id is not None else new_id()


def message_id_for_send() -> str:
    """A new message id: derived from the message being handled, or fresh outside a handler."""
    handling = current_handling.get()
    if handling is None:
        return new_id()
    derived = f"{handling.message_id}/{next(handling.sends)}"
    if len(derived) > MAX_DERIVED_ID_LENGTH:
        derived = "h-" + hashlib.blake2b(derived.encode(), digest_size=12).hexdigest()
    return derived
