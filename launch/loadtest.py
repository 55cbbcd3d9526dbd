"""What a load test measured, and the capacity it shows: pure functions over the
requests the locustfile recorded (launch/locustfile.py); `troupe loadtest`
(launch/cmd_loadtest.py) runs locust and prints `format_summary`.

Definitions (docs/serving.md repeats them):

* A request's latency runs from sending it to its whole response; its time is when it
  ended. Latency percentiles are over successful requests (a refused request's fast 503
  would flatter them) and use the nearest rank: the p-th percentile is the smallest
  latency that at least p% of latencies do not exceed.
* Throughput: requests (successful or not) and generated tokens per second of the
  test, from the first request sent to the last one ended.
* Capacity: the test is cut into windows of ``window_s`` seconds, starting every
  second, that lie wholly inside it (one window over the whole test if it is shorter).
  A window's request rate is the requests that ended in it over its length, and its
  latency the percentile (``--slo-percentile``, 95 by default) of the successful ones.
  A window meets the objective when that latency is at most ``--slo-ms`` and no
  request in it failed; the capacity is the highest request rate of such a window.
  Locust adds users step by step (``--spawn-rate``), so the windows see the load grow
  and the capacity is the most load the service carried within its objective.
* Planning figure: capacity x (1 - `HEADROOM`), keeping 20% for traffic peaks.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from runtime.statistics import percentile

HEADROOM = 0.2
"""Share of the capacity kept free for traffic peaks in the planning figure."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


class RequestSample(NamedTuple):
    """One request as the locustfile saw it."""

    start: float
    """Unix time it was sent, seconds."""
    latency_s: float
    ok: bool
    completion_tokens: int

    @property
    def end(self) -> float:
        return self.start + self.latency_s


class Window(NamedTuple):
    """The requests that ended in ``[start, start + length_s)``."""

    start: float
    length_s: float
    requests: int
    failures: int
    latency_ms: float | None
    """The objective's percentile of the successful requests' latencies; None without any."""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.length_s


@dataclass(frozen=True)
class LoadTestSummary:
    requests: int
    failures: int
    duration_s: float
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    slo_ms: float
    slo_percentile: float
    window_s: float
    capacity_requests_per_s: float | None
    """The highest window rate that met the objective; None when no window did."""
    planning_requests_per_s: float | None
    """``capacity_requests_per_s * (1 - HEADROOM)``."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``5m``, ``1h30m``, ``1m30.5s``."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(value) * units[unit] for value, unit in _DURATION_PART.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration: write 60, 60s, 5m or 1h30m")
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def windows(samples: Sequence[RequestSample], length_s: float, percent: float, step_s: float = 1.0) -> list[Window]:
    """Windows of ``length_s`` starting every ``step_s`` from the first request sent,
    each wholly inside the test; one window over the whole test when it is shorter."""
    if not samples:
        return []
    ordered = sorted(samples, key=lambda sample: sample.end)
    ends = [sample.end for sample in ordered]
    first, last = min(sample.start for sample in samples), ends[-1]
    if last - first <= length_s:
        return [_window(ordered, first, max(last - first, 1e-9), percent)]
    starts = [first + index * step_s for index in range(int((last - first - length_s) / step_s) + 1)]
    return [_window(ordered[bisect.bisect_left(ends, start) : bisect.bisect_left(ends, start + length_s)],
                    start, length_s, percent) for start in starts]


def _window(inside: Sequence[RequestSample], start: float, length_s: float, percent: float) -> Window:
    latencies = [sample.latency_s * 1000 for sample in inside if sample.ok]
    return Window(start, length_s, len(inside), sum(not sample.ok for sample in inside),
                  percentile(latencies, percent) if latencies else None)


def capacity(candidates: Iterable[Window], slo_ms: float) -> Window | None:
    """The window with the highest request rate among those with no failure and the
    objective's percentile at most ``slo_ms``."""
    met = [window for window in candidates
           if window.failures == 0 and window.latency_ms is not None and window.latency_ms <= slo_ms]
    return max(met, key=lambda window: window.requests_per_s, default=None)


def summarize(samples: Sequence[RequestSample], slo_ms: float, slo_percentile: float = 95.0,
              window_s: float = 5.0) -> LoadTestSummary:
    """The load test's numbers (see the module docstring for each definition)."""
    ok = [sample for sample in samples if sample.ok]
    latencies = [sample.latency_s * 1000 for sample in ok]
    duration = (max(s.end for s in samples) - min(s.start for s in samples)) if samples else 0.0
    window_s = min(window_s, duration) if duration > 0 else window_s  # a shorter test is one window
    best = capacity(windows(samples, window_s, slo_percentile), slo_ms)
    best_rate = best.requests_per_s if best is not None else None
    return LoadTestSummary(
        requests=len(samples), failures=len(samples) - len(ok), duration_s=duration,
        requests_per_s=len(samples) / duration if duration > 0 else 0.0,
        tokens_per_s=sum(sample.completion_tokens for sample in ok) / duration if duration > 0 else 0.0,
        p50_ms=percentile(latencies, 50) if latencies else None,
        p95_ms=percentile(latencies, 95) if latencies else None,
        p99_ms=percentile(latencies, 99) if latencies else None,
        slo_ms=slo_ms, slo_percentile=slo_percentile, window_s=window_s,
        capacity_requests_per_s=best_rate,
        planning_requests_per_s=best_rate * (1 - HEADROOM) if best_rate is not None else None,
    )


def read_samples(path: Path) -> list[RequestSample]:
    """The samples the locustfile wrote (one JSON object per line)."""
    return [RequestSample(float(row["start"]), float(row["latency_s"]), bool(row["ok"]), int(row["completion_tokens"]))
            for row in (json.loads(line) for line in path.read_text().splitlines() if line.strip())]


def format_summary(summary: LoadTestSummary) -> str:
    """The lines `troupe loadtest` prints."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    share = summary.failures / summary.requests if summary.requests else 0.0
    objective = f"p{summary.slo_percentile:g} <= {summary.slo_ms:g} ms"
    lines = [
        f"requests      {summary.requests} in {summary.duration_s:.1f} s, {summary.failures} failed ({share:.1%})",
        f"throughput    {summary.requests_per_s:.1f} requests/s, {summary.tokens_per_s:.1f} tokens/s",
        f"latency       p50 {ms(summary.p50_ms)}, p95 {ms(summary.p95_ms)}, p99 {ms(summary.p99_ms)}",
    ]
    if summary.capacity_requests_per_s is None:
        lines.append(f"capacity      no {summary.window_s:.3g} s window met {objective} without failures: "
                     f"lower --users or raise --slo-ms")
    else:
        lines.append(f"capacity      {summary.capacity_requests_per_s:.1f} requests/s met {objective} "
                     f"(the best {summary.window_s:.3g} s window without failures)")
        lines.append(f"plan for      {summary.planning_requests_per_s:.1f} requests/s "
                     f"(capacity less {HEADROOM:.0%} headroom for traffic peaks)")
    return "\n".join(lines)
