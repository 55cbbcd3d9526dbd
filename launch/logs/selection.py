"""Choosing events from a run's logs: filters (``troupe logs`` flags) and one trace's timeline.

Pure functions over the events of `launch.logs.reading`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from launch.logs.reading import Event, Names, merge

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
