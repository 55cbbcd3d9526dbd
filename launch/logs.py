"""Reading a run's structured message logs: parse, merge, filter, summarise.

Every actor writes ``RUN_DIR/logs/<instance>.jsonl`` (see `runtime.msglog`). An
event here is one parsed line, a plain dict, unchanged. Everything below except
`LogReader` is a pure function over such events, so `troupe logs`, a notebook and
the unit tests share it.

Why it is built this way: the logs are written by many processes with their own
clocks and flush batches, so nothing may assume a file is time-ordered or
complete. `LogReader` consumes only whole lines (a writer may be mid-line) and
the callers sort by ``ts``. Message halves are joined by ``message_id``: the
sender's ``send`` and the receiver's ``receive`` of one message share it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

Event = dict[str, Any]
"""One log line: a message event (keys in `runtime.msglog.MESSAGE_EVENT_KEYS`) or a lifecycle line."""

MESSAGE_EVENTS = ("send", "receive", "handled", "failed")
_RECORD_KEYS = {"ts", "run", "actor", "role", "event"}  # what every line carries


# ------------------------------------------------------------------ reading
def parse_line(raw: bytes | str) -> Event:
    """One JSONL line as an event. Raises ValueError unless it is an object with a numeric ``ts`` and an ``event``."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(event, dict):
        raise ValueError(f"not a JSON object but {type(event).__name__}")
    ts, name = event.get("ts"), event.get("event")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(name, str):
        raise ValueError("a log line needs a numeric 'ts' and a string 'event'")
    return event


@dataclass
class _Cursor:
    offset: int = 0  # bytes of the file consumed so far
    line_number: int = 0  # complete lines consumed so far
    partial: bytes = b""  # an unterminated tail, kept until its newline arrives


@dataclass
class LogReader:
    """Reads the ``*.jsonl`` files of a logs folder incrementally, whole lines only.

    Each `read_new` returns the events appended since the last call (files that
    appeared meanwhile included) and warnings ``"path:line: why"`` for malformed
    lines. A line without its newline yet is kept back: its writer may be mid-line.
    """

    logs_dir: Path
    _cursors: dict[Path, _Cursor] = field(default_factory=dict)

    def read_new(self, final: bool = False) -> tuple[list[Event], list[str]]:
        """New events in file order, and warnings.

        Args:
            final: the files are complete (no follow-up read): the last line of a
                file is parsed even without its newline, and skipped silently when
                it does not parse (a process killed mid-write leaves half a line).
        """
        events: list[Event] = []
        warnings: list[str] = []
        for path in sorted(self.logs_dir.glob("*.jsonl")):
            cursor = self._cursors.setdefault(path, _Cursor())
            try:
                with open(path, "rb") as file:
                    if file.seek(0, 2) < cursor.offset:  # truncated or replaced: start again
                        self._cursors[path] = cursor = _Cursor()
                    file.seek(cursor.offset)
                    data = file.read()
            except FileNotFoundError:  # removed since the listing: nothing left to read
                continue
            cursor.offset += len(data)
            lines = (cursor.partial + data).split(b"\n")
            cursor.partial = lines.pop()
            if final and cursor.partial.strip():
                lines.append(cursor.partial)
                cursor.partial = b""
            last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
            for index, line in enumerate(lines):
                cursor.line_number += 1
                if not line.strip():
                    continue
                try:
                    events.append(parse_line(line))
                except ValueError as error:
                    if not (final and index == last):
                        warnings.append(f"{path}:{cursor.line_number}: {error}")
        return events, warnings


def read_logs(logs_dir: Path) -> tuple[list[Event], list[str]]:
    """All events of a finished (or paused) logs folder, merged in time order, and warnings."""
    events, warnings = LogReader(logs_dir).read_new(final=True)
    return merge(events), warnings


def merge(events: list[Event]) -> list[Event]:
    """Events sorted by ``ts``; ties keep their input order (within a file, write order)."""
    return sorted(events, key=lambda event: event["ts"])


# -------------------------------------------------------------------- names
@dataclass
class Names:
    """Who is who, learnt from the events: actor -> role, endpoint -> actor.

    A ``peer`` is an actor name, or an endpoint when the sender addressed the
    actor by endpoint; ``actor.started`` lines map endpoints back to names.
    """

    roles: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: list[Event]) -> Names:
        names = cls()
        names.learn(events)
        return names

    def learn(self, events: list[Event]) -> None:
        for event in events:
            actor, role = event.get("actor"), event.get("role")
            if isinstance(actor, str) and isinstance(role, str):
                self.roles[actor] = role
            endpoint = event.get("endpoint")
            if isinstance(actor, str) and isinstance(endpoint, str):
                self.endpoints[endpoint] = actor

    def actor(self, peer: str) -> str:
        """The actor name of a peer (unchanged when unknown)."""
        return self.endpoints.get(peer, peer)

    def role(self, peer: str) -> str:
        """The role of a peer; its name when no log says (e.g. a client without a run directory)."""
        actor = self.actor(peer)
        return self.roles.get(actor, actor)


# ---------------------------------------------------------------- filtering
_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)")
_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float) -> float:
    """A ``--since`` value as a unix time: a duration ago (``30s``, ``5m``, ``2h``,
    ``1d``), an ISO-8601 time (local time unless it names a zone) or a unix time.
    Raises ValueError saying what is accepted."""
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return now - float(duration.group(1)) * _SECONDS[duration.group(2)]
    try:
        unix_time = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(unix_time):
            return unix_time
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r}: give a duration ago (30s, 5m, 2h, 1d), "
            "an ISO-8601 time (2024-05-01T12:30:00) or a unix timestamp"
        ) from None
    return moment.timestamp()  # a naive time is read as local time


def kind_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether `name` equals a pattern or starts with one ending in ``*`` (``registry.*``)."""
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def is_error(event: Event) -> bool:
    """A ``failed`` event, or a lifecycle line carrying an error or ``crashed: true``."""
    return event["event"] == "failed" or bool(event.get("error")) or event.get("crashed") is True


@dataclass(frozen=True)
class EventFilter:
    """What ``troupe logs`` keeps: all given conditions hold; a tuple matches any of its values.

    ``kinds`` match the message kind, or a lifecycle line's event name. Given
    `Names`, `matches` lets ``roles`` and ``instances`` match the peer of a message
    event too, so both halves of an edge stay (as stats and flow arrows need).
    """

    roles: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    trace: str | None = None
    trace_prefix: bool = False  # `trace` is a prefix (following a trace that may not exist yet)
    since: float | None = None
    errors: bool = False

    def matches(self, event: Event, names: Names | None = None) -> bool:
        roles, actors = {event.get("role")}, {event.get("actor")}
        peer = event.get("peer")
        if names is not None and isinstance(peer, str):
            roles.add(names.role(peer))
            actors.add(names.actor(peer))
        if self.roles and roles.isdisjoint(self.roles):
            return False
        if self.instances and actors.isdisjoint(self.instances):
            return False
        if self.kinds and not kind_matches(str(event.get("kind") or event["event"]), self.kinds):
            return False
        if self.trace is not None:
            trace_id = event.get("trace_id") or ""
            if not (trace_id.startswith(self.trace) if self.trace_prefix else trace_id == self.trace):
                return False
        if self.since is not None and event["ts"] < self.since:
            return False
        return not self.errors or is_error(event)


def select(events: list[Event], event_filter: EventFilter, names: Names | None = None) -> list[Event]:
    """The events `event_filter` keeps (with `names`: roles and instances match either end)."""
    return [event for event in events if event_filter.matches(event, names)]


# -------------------------------------------------------------------- trace
class TraceLookupError(LookupError):
    """No trace id, or more than one, starts with the given prefix."""


def resolve_trace(events: list[Event], prefix: str) -> str:
    """The one trace id that equals or starts with `prefix`. Raises TraceLookupError."""
    trace_ids = {event.get("trace_id") for event in events} - {None}
    if prefix in trace_ids:
        return prefix
    candidates = sorted(t for t in trace_ids if t.startswith(prefix))
    if not candidates:
        raise TraceLookupError(f"no event has a trace id starting with {prefix!r}")
    if len(candidates) > 1:
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        raise TraceLookupError(f"{len(candidates)} trace ids start with {prefix!r} ({shown}): give more of it")
    return candidates[0]


class TimelineStep(NamedTuple):
    offset_ms: float
    """Milliseconds since the trace's first event."""
    gap_ms: float
    """Milliseconds since the previous event of the trace (0 for the first)."""
    event: Event


def trace_timeline(events: list[Event], trace_id: str) -> list[TimelineStep]:
    """The events of one trace in time order, with offsets and gaps."""
    traced = merge([event for event in events if event.get("trace_id") == trace_id])
    steps: list[TimelineStep] = []
    for index, event in enumerate(traced):
        previous = traced[index - 1]["ts"] if index else event["ts"]
        steps.append(TimelineStep((event["ts"] - traced[0]["ts"]) * 1e3, (event["ts"] - previous) * 1e3, event))
    return steps


# -------------------------------------------------------------------- stats
def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100): the smallest value with at
    least q% of the values at or below it, i.e. ``sorted(values)[ceil(q/100 * n) - 1]``.
    None for no values."""
    if not values:
        return None
    rank = max(1, math.ceil(q * len(values) / 100))
    return sorted(values)[rank - 1]


class EdgeStats(NamedTuple):
    """One row of ``troupe logs --stats``: the messages of one kind from one role to another."""

    sender: str
    receiver: str
    kind: str
    messages: int
    """Sends logged by the sender (the receiver's receives when the sender kept no log)."""
    bytes: int
    """Wire bytes of those messages."""
    delivery_p50_ms: float | None
    delivery_p99_ms: float | None
    """Receive time minus send time, over messages both ends logged (two clocks on two hosts)."""
    handle_p50_ms: float | None
    handle_p99_ms: float | None
    """Handler run time, from the receiver's ``handled`` events."""
    failed: int
    """``failed`` events: handler errors and refusals at the receiver, undelivered sends at the sender."""


def edge_stats(events: list[Event], names: Names | None = None) -> list[EdgeStats]:
    """Per edge (sender role, receiver role, kind): counts, bytes, latency percentiles; sorted by edge."""
    names = names if names is not None else Names.from_events(events)
    sends = {e.get("message_id"): e for e in events if e["event"] == "send"}
    receives = {e.get("message_id"): e for e in events if e["event"] == "receive"}
    received_by = {(e.get("actor"), e.get("message_id")) for e in receives.values()}
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # messages, bytes, failed
    delivery: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    handling: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for event in events:
        name, kind, peer = event["event"], event.get("kind"), event.get("peer")
        if name not in MESSAGE_EVENTS:
            continue
        receiver_side = (names.role(peer), event.get("role", "?"), kind)  # this actor received it
        sender_side = (event.get("role", "?"), names.role(peer), kind)  # this actor sent it
        message_id = event.get("message_id")
        if name == "send":
            receive = receives.get(message_id)
            edge = (event.get("role", "?"), receive.get("role", "?"), kind) if receive else sender_side
            counts[edge][0] += 1
            counts[edge][1] += event.get("bytes") or 0
            if receive:
                delivery[edge].append(receive["ts"] - event["ts"])
        elif name == "receive" and message_id not in sends:
            counts[receiver_side][0] += 1
            counts[receiver_side][1] += event.get("bytes") or 0
        elif name == "handled":
            counts.setdefault(receiver_side, [0, 0, 0])  # a row even when no log kept the sends
            if event.get("handle_s") is not None:
                handling[receiver_side].append(event["handle_s"])
        elif name == "failed":
            received = message_id == "?" or (event.get("actor"), message_id) in received_by
            counts[receiver_side if received else sender_side][2] += 1

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else value * 1e3

    return [
        EdgeStats(*edge, messages, nbytes, ms(delivery[edge], 50), ms(delivery[edge], 99),
                  ms(handling[edge], 50), ms(handling[edge], 99), failed)
        for edge, (messages, nbytes, failed) in sorted(counts.items(), key=lambda item: tuple(map(str, item[0])))
    ]


# ----------------------------------------------------------------- perfetto
_MARK_US = 1.0  # send and receive are drawn as 1 us slices, so flow arrows have a slice to bind to


def perfetto_trace(events: list[Event], names: Names | None = None) -> dict[str, Any]:
    """A Chrome trace-event document (ui.perfetto.dev, chrome://tracing) of `events`.

    One process per role, one thread per actor. ``handled``/``failed`` are slices
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
        {"ph": "M", "name": "thread_name", "pid": pids[role], "tid": tids[actor], "args": {"name": actor}}
        for role, actor in actors
    ]
    received = {e.get("message_id") for e in events if e["event"] == "receive"}
    paired = [e.get("message_id") for e in events if e["event"] == "send" and e.get("message_id") in received]
    flow_ids = {message_id: index + 1 for index, message_id in enumerate(dict.fromkeys(paired))}  # in send order
    for event in events:
        name = event["event"]
        where = {"pid": pids[event.get("role") or "?"], "tid": tids[event.get("actor") or "?"]}
        us = round((event["ts"] - t0) * 1e6, 3)
        args = {key: value for key, value in event.items() if key not in _RECORD_KEYS and value is not None}
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


# --------------------------------------------------------------- formatting
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

    The peer cell shows direction: ``-> B`` for a send to B, ``<- A`` for a receive from A.
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
            for key, value in event.items() if key not in _RECORD_KEYS
        )
    return (clock(event["ts"]), str(event.get("actor", "?")), name, str(event.get("kind") or ""),
            arrow + peer, size, timing, short_trace(event.get("trace_id")), detail)
