"""Reading a run's structured message logs: parse lines, follow files, merge, learn names.

Every actor writes ``RUN_DIR/logs/<instance>.jsonl`` (see `runtime.msglog`). An
event here is one parsed line, a plain dict, unchanged.

Why it is built this way: the logs are written by many processes with their own
clocks and flush batches, so nothing may assume a file is time-ordered or
complete. `LogReader` consumes only whole lines (a writer may be mid-line) and
the callers sort by ``ts``. Message halves are joined by ``message_id``: the
sender's ``send`` and the receiver's ``receive`` of one message share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

Event = dict[str, Any]
"""One log line: a message event (keys in `runtime.msglog.MESSAGE_EVENT_KEYS`) or a lifecycle line."""

MESSAGE_EVENTS = ("send", "receive", "handled", "failed")
REGISTRY_EVENTS = ("registry.joined", "registry.left")
"""The registry's lines about an actor that registered or left: its ``name``, ``host``, ``pid`` (and ``endpoint``)."""
RECORD_KEYS = frozenset({"ts", "run", "actor", "role", "event"})
"""What every line carries; the other keys are the event's own."""


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
    """Who is who, learnt from the events: actor -> role, endpoint -> actor, actor -> host.

    A ``peer`` is an actor name, or an endpoint when the sender addressed the
    actor by endpoint; ``actor.started`` and ``registry.joined`` lines map endpoints
    back to names. Hosts come from the registry's ``registry.joined`` lines (the host
    an actor registered from: on a cluster, its node) and from any line that states
    its writer's own ``host`` (the registry's ``registry.serving``); an actor that
    registered again (a restart) has the host it registered from last.
    """

    roles: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: list[Event]) -> Names:
        names = cls()
        names.learn(events)
        return names

    def learn(self, events: list[Event]) -> None:
        for event in events:
            writer, role = event.get("actor"), event.get("role")
            if isinstance(writer, str) and isinstance(role, str):
                self.roles[writer] = role
            # the registry's lines are about the actor that joined or left (`name`); others about their writer
            subject = event.get("name") if event.get("event") in REGISTRY_EVENTS else writer
            if not isinstance(subject, str):
                continue
            endpoint, host = event.get("endpoint"), event.get("host")
            if isinstance(endpoint, str):
                self.endpoints[endpoint] = subject
            if isinstance(host, str) and host:
                self.hosts[subject] = host

    def actor(self, peer: str) -> str:
        """The actor name of a peer (unchanged when unknown)."""
        return self.endpoints.get(peer, peer)

    def role(self, peer: str) -> str:
        """The role of a peer; its name when no log says (e.g. a client without a run directory)."""
        actor = self.actor(peer)
        return self.roles.get(actor, actor)

    def host(self, peer: str) -> str | None:
        """The host (node) a peer runs on; None when no log says (a client, a run from before hosts were logged)."""
        return self.hosts.get(self.actor(peer))

    def located(self, peer: str) -> str:
        """``actor@host``, or the actor's name alone when its host is unknown."""
        actor, host = self.actor(peer), self.host(peer)
        return f"{actor}@{host}" if host else actor
