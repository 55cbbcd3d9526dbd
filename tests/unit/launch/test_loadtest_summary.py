"""launch/loadtest.py: durations, percentiles, windows, the capacity and planning figures,
against numbers worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.loadtest import (
    HEADROOM, RequestSample, Window, capacity, format_summary, parse_duration, percentile, read_samples, summarize,
    windows,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("60", 60.0), ("60s", 60.0), ("5m", 300.0), ("1h30m", 5400.0), ("1m30.5s", 90.5), (" 2M ", 120.0),
])
def test_durations_read_like_locusts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "0s", "-3s", "1d"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile(values, 0.1) == 1
    assert percentile([30.0, 10.0, 20.0], 50) == 20  # rank ceil(1.5) = 2 of the sorted values
    assert percentile([7.0], 99) == 7
    with pytest.raises(ValueError):
        percentile([], 50)


def steady(rate: int, seconds: int, latency_s: float, start: float = 1000.0, ok: bool = True,
           tokens: int = 4) -> list[RequestSample]:
    """`rate` requests ending in each second, all with the same latency."""
    return [RequestSample(start + second + (index + 0.5) / rate - latency_s, latency_s, ok, tokens)
            for second in range(seconds) for index in range(rate)]


def test_windows_slide_by_a_second_and_count_the_requests_that_ended_in_them() -> None:
    # 2 requests/s for 10 s, each taking 0.5 s: the test runs from 999.75 to 1009.75
    samples = steady(2, 10, 0.5)
    found = windows(samples, length_s=5, percent=95)
    assert [round(w.start - 999.75, 6) for w in found] == [0, 1, 2, 3, 4, 5]
    assert all(w.length_s == 5 for w in found)
    # [999.75, 1004.75) holds the ends 1000.25 .. 1004.75 minus the last: 9 requests
    assert found[0].requests == 9 and found[1].requests == 10
    assert all(w.failures == 0 and w.latency_ms == 500 for w in found)


def test_a_test_shorter_than_a_window_is_one_window_over_all_of_it() -> None:
    samples = [RequestSample(0.0, 1.0, True, 1), RequestSample(0.5, 1.5, True, 1), RequestSample(1.0, 1.0, False, 0)]
    [window] = windows(samples, length_s=5, percent=50)
    assert (window.start, window.length_s, window.requests, window.failures) == (0.0, 2.0, 3, 1)
    assert window.latency_ms == 1000 and window.requests_per_s == 1.5


def test_capacity_is_the_fastest_window_within_the_objective_without_failures() -> None:
    windows_seen = [
        Window(0, 5, 50, 0, 200.0),   # 10/s, fine
        Window(1, 5, 80, 0, 450.0),   # 16/s, fine: the capacity
        Window(2, 5, 100, 0, 900.0),  # 20/s, too slow
        Window(3, 5, 90, 2, 300.0),   # 18/s, fast enough but with failures
        Window(4, 5, 0, 0, None),     # nothing ended
    ]
    assert capacity(windows_seen, slo_ms=500) == windows_seen[1]
    assert capacity(windows_seen, slo_ms=100) is None


def test_summary_of_a_ramp_finds_the_load_where_latency_broke_the_objective() -> None:
    # 10 s at 4/s and 200 ms, then 10 s at 8/s and 400 ms, then 10 s at 12/s and 2 s
    samples = steady(4, 10, 0.2) + steady(8, 10, 0.4, start=1010.0) + steady(12, 10, 2.0, start=1020.0)
    summary = summarize(samples, slo_ms=500, slo_percentile=95, window_s=5)
    assert summary.capacity_requests_per_s == pytest.approx(8.0)
    assert summary.planning_requests_per_s == pytest.approx(8.0 * (1 - HEADROOM)) == pytest.approx(6.4)
    assert summary.requests == 240 and summary.failures == 0
    first_sent = 1000.0 + 0.125 - 0.2
    assert summary.duration_s == pytest.approx(1030.0 - 1 / 24 - first_sent)
    assert summary.requests_per_s == pytest.approx(240 / summary.duration_s)
    assert summary.tokens_per_s == pytest.approx(4 * 240 / summary.duration_s)
    # 40 at 200 ms, 80 at 400 ms, 120 at 2 s: rank 120 (p50) is 400 ms, the rest are 2 s
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == pytest.approx((400, 2000, 2000))


def test_failures_count_in_throughput_but_not_in_latency_or_tokens() -> None:
    samples = steady(2, 4, 0.1) + steady(2, 4, 0.001, start=1000.3, ok=False, tokens=0)
    summary = summarize(samples, slo_ms=1000, window_s=10)
    assert summary.requests == 16 and summary.failures == 8
    assert summary.p50_ms == pytest.approx(100) and summary.p99_ms == pytest.approx(100)
    assert summary.tokens_per_s == pytest.approx(8 * 4 / summary.duration_s)
    assert summary.capacity_requests_per_s is None  # the only window has failures


def test_the_printed_summary_gives_throughput_latency_capacity_and_planning(tmp_path: Path) -> None:
    summary = summarize(steady(4, 10, 0.2) + steady(8, 10, 0.4, start=1010.0), slo_ms=500)
    text = format_summary(summary)
    # 40 requests at 200 ms and 80 at 400 ms, from 999.925 to 1019.9375
    assert "requests      120 in 20.0 s, 0 failed (0.0%)" in text
    assert "p50 400 ms, p95 400 ms, p99 400 ms" in text
    assert "capacity      8.0 requests/s met p95 <= 500 ms" in text
    assert "plan for      6.4 requests/s (capacity less 20% headroom" in text
    assert json.loads(summary.to_json())["planning_requests_per_s"] == pytest.approx(6.4)
    over = format_summary(summarize(steady(4, 10, 0.2), slo_ms=100))
    assert "no 5 s window met p95 <= 100 ms" in over and "plan for" not in over


def test_samples_read_back_from_the_locustfiles_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"start": 1.5, "latency_s": 0.25, "ok": true, "completion_tokens": 7}\n\n'
                    '{"start": 2.0, "latency_s": 0.5, "ok": false, "completion_tokens": 0}\n')
    assert read_samples(path) == [RequestSample(1.5, 0.25, True, 7), RequestSample(2.0, 0.5, False, 0)]
