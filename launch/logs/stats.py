"""Per-edge message statistics of a run's logs (``troupe logs --stats``).

An edge is (sender role, receiver role, message kind). Message halves are joined
by ``message_id``: the sender's ``send`` and the receiver's ``receive`` share it,
and their times give the delivery latency (two clocks, possibly on two hosts).
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from launch.logs.reading import MESSAGE_EVENTS, Event, Names
from runtime.statistics import percentile


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

    def ms(values: list[float], percent: float) -> float | None:
        return percentile(values, percent) * 1e3 if values else None  # None: no message of the edge timed it

    return [
        EdgeStats(*edge, messages, nbytes, ms(delivery[edge], 50), ms(delivery[edge], 99),
                  ms(handling[edge], 50), ms(handling[edge], 99), failed)
        for edge, (messages, nbytes, failed) in sorted(counts.items(), key=lambda item: tuple(map(str, item[0])))
    ]
