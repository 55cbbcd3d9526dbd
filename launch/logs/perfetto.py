"""A run's logs as a Chrome trace-event document, for ui.perfetto.dev (``troupe logs --perfetto``)."""

from __future__ import annotations

from typing import Any

from launch.logs.reading import MESSAGE_EVENTS, RECORD_KEYS, Event, Names, merge

_MARK_US = 1.0  # send and receive are drawn as 1 us slices, so flow arrows have a slice to bind to


def perfetto_trace(events: list[Event], names: Names | None = None) -> dict[str, Any]:
    """A Chrome trace-event document (ui.perfetto.dev, chrome://tracing) of `events`.

    One process per role, one thread per actor (named ``actor@host`` when the logs say
    where it runs). ``handled``/``failed`` are slices
    ``[ts - handle_s, ts]`` (the line is written when the handler returns); each
    send and receive is a short slice, and a joined pair (same ``message_id``) is a
    flow arrow (``s`` -> ``f``); lifecycle lines are instants. Times are
    microseconds since the earliest event.
    """
    names = names if names is not None else Names.from_events(events)
    events = merge(events)
    if not events:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min(event["ts"] - (event.get("handle_s") or 0.0) for event in events)
    roles = sorted({event.get("role") or "?" for event in events})
    actors = sorted({(event.get("role") or "?", event.get("actor") or "?") for event in events})
    pids = {role: index + 1 for index, role in enumerate(roles)}
    tids = {actor: len(roles) + index + 1 for index, (_, actor) in enumerate(actors)}  # never equal to a pid
    trace: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pids[role], "args": {"name": role}} for role in roles
    ] + [
        {"ph": "M", "name": "thread_name", "pid": pids[role], "tid": tids[actor], "args": {"name": names.located(actor)}}
        for role, actor in actors
    ]
    received = {e.get("message_id") for e in events if e["event"] == "receive"}
    paired = [e.get("message_id") for e in events if e["event"] == "send" and e.get("message_id") in received]
    flow_ids = {message_id: index + 1 for index, message_id in enumerate(dict.fromkeys(paired))}  # in send order
    for event in events:
        name = event["event"]
        where = {"pid": pids[event.get("role") or "?"], "tid": tids[event.get("actor") or "?"]}
        us = round((event["ts"] - t0) * 1e6, 3)
        args = {key: value for key, value in event.items() if key not in RECORD_KEYS and value is not None}
        handle_s = event.get("handle_s")
        if name in ("handled", "failed") and handle_s is not None:
            start = round((event["ts"] - handle_s - t0) * 1e6, 3)
            trace.append({"ph": "X", "name": event.get("kind"), "cat": name, "ts": start,
                          "dur": round(handle_s * 1e6, 3), **where, "args": args})
        elif name in ("send", "receive"):
            peer = names.actor(event.get("peer") or "?")
            label = f"{event.get('kind')} {'->' if name == 'send' else '<-'} {peer}"
            trace.append({"ph": "X", "name": label, "cat": name, "ts": us, "dur": _MARK_US, **where, "args": args})
            flow = flow_ids.get(event.get("message_id"))
            if flow is not None:
                phase = {"ph": "s"} if name == "send" else {"ph": "f", "bp": "e"}
                trace.append({**phase, "id": flow, "name": event.get("kind"), "cat": "message",
                              "ts": round(us + _MARK_US / 2, 3), **where})
        else:
            category = name if name in MESSAGE_EVENTS else "lifecycle"  # or a failure before any handler ran
            trace.append({"ph": "i", "s": "t", "name": name, "cat": category, "ts": us, **where, "args": args})
    return {"traceEvents": trace, "displayTimeUnit": "ms"}
