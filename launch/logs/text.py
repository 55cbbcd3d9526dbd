"""Events and sizes as text cells, for ``troupe logs`` listings and tables."""

from __future__ import annotations

from datetime import datetime

import orjson

from launch.logs.reading import MESSAGE_EVENTS, RECORD_KEYS, Event, Names


def human_bytes(count: int) -> str:
    """``207 B``, ``1.5 KiB``, ``12.0 MiB``: binary units, one decimal above bytes."""
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def clock(ts: float) -> str:
    """Local wall-clock time ``HH:MM:SS.mmm`` of a unix time."""
    moment = datetime.fromtimestamp(ts)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def short_trace(trace_id: str | None) -> str:
    """The first 18 characters of a trace id: enough to tell traces apart, and a prefix `--trace` accepts."""
    return (trace_id or "")[:18]


def event_cells(event: Event, names: Names) -> tuple[str, ...]:
    """One event as text cells: time, actor, event, kind, peer, bytes, timing, trace, detail.

    The actor cell says where the actor runs when the logs say it: ``trainer-0@node1``
    (its host, from `Names`). The peer cell shows direction: ``-> B`` for a send to B,
    ``<- A`` for a receive from A.
    The detail is a message event's error, or a lifecycle line's own fields as ``key=value``.
    """
    name = event["event"]
    peer = names.actor(event["peer"]) if event.get("peer") else ""
    arrow = {"send": "-> ", "receive": "<- "}.get(name, "   " if peer else "")
    size = human_bytes(event["bytes"]) if isinstance(event.get("bytes"), int) else ""
    timing = ""
    if event.get("queue_s") is not None and event.get("handle_s") is not None:
        timing = f"q {event['queue_s'] * 1e3:.2f} ms  h {event['handle_s'] * 1e3:.2f} ms"
    if name in MESSAGE_EVENTS:
        detail = event.get("error") or ""
    else:
        detail = " ".join(
            f"{key}={value if isinstance(value, str) else orjson.dumps(value).decode()}"
            for key, value in event.items() if key not in RECORD_KEYS
        )
    actor = event.get("actor")
    return (clock(event["ts"]), names.located(actor) if isinstance(actor, str) else "?", name, str(event.get("kind") or ""),
            arrow + peer, size, timing, short_trace(event.get("trace_id")), detail)
