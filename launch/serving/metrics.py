"""The service's Prometheus metrics, rendered in the text exposition format (0.0.4).

A few dozen lines instead of a client library: three metric kinds, labels, and a
renderer. Every update happens on the event loop's thread (the worker thread hands
its numbers over with ``call_soon_threadsafe``), so nothing here takes a lock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS_PER_SECOND_BUCKETS = (10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _key(name: str, label_names: tuple[str, ...], labels: dict[str, str]) -> tuple[str, ...]:
    if set(labels) != set(label_names):
        raise ValueError(f"{name} takes labels {label_names}, got {sorted(labels)}")
    return tuple(str(labels[label]) for label in label_names)


@dataclass
class Counter:
    """A value that only goes up (requests, tokens, errors), one per label combination."""

    name: str
    help: str
    label_names: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _key(self.name, self.label_names, labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        values = self.values or ({(): 0.0} if not self.label_names else {})
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter",
                *(f"{self.name}{_labels(self.label_names, key)} {_number(value)}" for key, value in sorted(values.items()))]


@dataclass
class Gauge:
    """A value that goes up and down (queue depth)."""

    name: str
    help: str
    current: float = 0.0

    def set(self, value: float) -> None:
        self.current = value

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self.current)}"]


@dataclass
class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    name: str
    help: str
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    """Per label combination: observations per bucket, the last one above every bound."""
    sums: dict[tuple[str, ...], float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = _key(self.name, self.label_names, labels)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(self.sums[key])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {cumulative}")
        return lines


class ServingMetrics:
    """What ``GET /metrics`` shows. Names carry their unit, Prometheus-style."""

    def __init__(self) -> None:
        self.request_latency = Histogram(
            "troupe_request_latency_seconds", "Time from receiving a generation request to its last byte.",
            ("endpoint",))
        self.time_to_first_token = Histogram(
            "troupe_time_to_first_token_seconds", "Time from receiving a generation request to its first token.",
            ("endpoint",))
        self.batch_tokens_per_second = Histogram(
            "troupe_batch_tokens_per_second", "Tokens a batch generated per second of its generation.", (),
            TOKENS_PER_SECOND_BUCKETS)
        self.batch_size = Histogram(
            "troupe_batch_size", "Requests per generation batch.", (), BATCH_SIZE_BUCKETS)
        self.queue_depth = Gauge("troupe_queue_depth", "Requests waiting for a batch.")
        self.running = Gauge("troupe_requests_running", "Requests in the batch being generated.")
        self.generated_tokens = Counter("troupe_generated_tokens_total", "Tokens generated.")
        self.prompt_tokens = Counter("troupe_prompt_tokens_total", "Prompt tokens of admitted requests.")
        self.requests = Counter("troupe_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ("endpoint", "status"))
        self.errors = Counter("troupe_request_errors_total", "HTTP requests answered with a 4xx or 5xx status.",
                              ("endpoint", "status"))
        self.rejected = Counter("troupe_requests_rejected_total", "Requests turned away because the queue was full.")

    def render(self) -> str:
        families: list[Counter | Gauge | Histogram] = [
            self.request_latency, self.time_to_first_token, self.batch_tokens_per_second, self.batch_size,
            self.queue_depth, self.running, self.generated_tokens, self.prompt_tokens, self.requests, self.errors,
            self.rejected,
        ]
        return "\n".join(line for family in families for line in family.render()) + "\n"
