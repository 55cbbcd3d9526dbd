"""The structured message log: one JSON line per message event, through structlog.

Every actor (and client) writes ``logs/<instance>.jsonl`` in its run directory.
Message events are ``send``, ``receive``, ``handled`` and ``failed``; each line has
the same keys:

    ts, run, actor, role, event, peer, kind, message_id, correlation_id,
    trace_id, bytes, queue_s, handle_s, error

Lifecycle events (``actor.started``, ``actor.stopped``, ...) go to the same file
with their own keys.

Why it is cheap: on the message path an event is one tuple appended to a list
(well under a microsecond). Rendering through structlog's processor chain and
writing happen in batches, every `flush_interval_s`, off the path of the message,
usually while the process waits for its peer. If the process is killed with
SIGKILL, at most one flush interval of lines is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog

MESSAGE_EVENT_KEYS = (
    "ts", "run", "actor", "role", "event", "peer", "kind", "message_id", "correlation_id",
    "trace_id", "bytes", "queue_s", "handle_s", "error",
)
"""The keys of every message event line."""
MAX_PENDING_EVENTS = 65536
"""Beyond this many unrendered events a flush happens at once, so memory stays bounded."""


def _render_json(_: Any, __: str, event_dict: dict[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


class _LineBuffer:
    """structlog's output end: collects rendered lines until `MessageLog.flush` writes them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def msg(self, line: str) -> None:
        self.lines.append(line)

    info = warning = error = debug = msg


class MessageLog:
    """Per-process structured log of message and lifecycle events.

    Args:
        path: the JSONL file to append to; None keeps the log in memory only
            (events are still counted, nothing is written).
        run: run name, actor: this actor's name (the instance), role: its role.
        enabled: when False, message events are not recorded at all (lifecycle
            events still are).
    """

    def __init__(self, path: Path | None, run: str, actor: str, role: str, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._pending: list[tuple[Any, ...]] = []
        self._buffer = _LineBuffer()
        self.logger = structlog.wrap_logger(
            self._buffer,
            processors=[_render_json],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
        ).bind(run=run, actor=actor, role=role)
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.counts: Counter[str] = Counter()
        """Message events by type, counted even when recording is off (for `troupe ps`)."""

    def message_event(
        self,
        event: str,
        peer: str,
        kind: str,
        message_id: str,
        correlation_id: str | None,
        trace_id: str | None,
        nbytes: int,
        queue_s: float | None = None,
        handle_s: float | None = None,
        error: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Record one message event (send, receive, handled, failed, duplicate). Hot path: no I/O.

        `ts` defaults to now; a send passes the time it stamped on the message, taken
        before the socket call, so a send never appears after its own receive.
        """
        self.counts[event] += 1
        if not self.enabled:
            return
        self._pending.append(
            (ts if ts is not None else time.time(), event, peer, kind, message_id, correlation_id, trace_id,
             nbytes, queue_s, handle_s, error)
        )
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self.flush()

    def lifecycle(self, event: str, **fields: Any) -> None:
        """Record a lifecycle event (rendered now, written at the next flush)."""
        self.logger.info(event, ts=time.time(), **fields)

    def flush(self) -> None:
        """Render pending message events through structlog and append everything to the file."""
        pending, self._pending = self._pending, []
        if self._file is None:  # nowhere to write: nothing to render
            self._buffer.lines.clear()
            return
        info = self.logger.info
        for ts, event, peer, kind, message_id, correlation_id, trace_id, nbytes, queue_s, handle_s, error in pending:
            info(
                event, ts=ts, peer=peer, kind=kind, message_id=message_id, correlation_id=correlation_id,
                trace_id=trace_id, bytes=nbytes, queue_s=queue_s, handle_s=handle_s, error=error,
            )
        lines, self._buffer.lines = self._buffer.lines, []
        if self._file is not None and lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    async def flush_periodically(self, interval_s: float) -> None:
        """Flush every `interval_s` until cancelled (run it in the owner's task group)."""
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
