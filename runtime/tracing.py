"""The trace id of the message being handled, carried through asyncio's context.

A handler runs with the trace id of its incoming message set here; every message
it sends (and every task it starts, since tasks copy the context) carries the same
trace id, so one batch can be followed through every role.
"""

from __future__ import annotations

from contextvars import ContextVar

from protocols.envelope import new_id

current_trace_id: ContextVar[str | None] = ContextVar("troupe_trace_id", default=None)


def trace_id_for_send() -> str:
    """The current trace id, or a new one when this send starts a trace."""
    trace_id = current_trace_id.get()
    return trace_id if trace_id is not None else new_id()
