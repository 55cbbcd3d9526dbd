"""`troupe logs` on the logs of real actors: the CLI in a subprocess, every mode and filter."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from runtime.client import Client
from runtime.errors import RemoteError
from runtime.spawn import spawn_actor
from tests.component.actors import Echo, Forward, RaiseOnAsk

TROUPE = str(Path(sys.executable).parent / "troupe")
ECHOER = "tests.component.actors:Echoer"


async def make_logs(run_dir: Path) -> str:
    """Two echoers and a driver: an echo, a failing ask, a forward from echo-0 to echo-1.
    Returns the forward's trace id."""
    front = await spawn_actor(ECHOER, "echo-0", run_dir=run_dir, run="t")
    try:
        back = await spawn_actor(ECHOER, "echo-1", run_dir=run_dir, run="t")
        try:
            async with Client("driver", run_dir=run_dir, run="t") as client:
                await client.ask(front.endpoint, Echo("x" * 2000))
                with pytest.raises(RemoteError, match="boom"):
                    await client.ask(front.endpoint, RaiseOnAsk("boom"))
                reply = await client.ask(front.endpoint, Forward(back.endpoint, "hop"))
        finally:
            await back.stop()
    finally:
        await front.stop()
    return reply.trace_id


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """One run's logs, shared by the read-only tests of this module: (run_dir, forward trace id)."""
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, asyncio.run(make_logs(run_dir))


def troupe_logs(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TROUPE, "logs", *map(str, args)], capture_output=True, text=True, timeout=60)


def logged(run_dir: Path) -> list[dict]:
    lines = []
    for path in (run_dir / "logs").glob("*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(lines, key=lambda line: line["ts"])


def json_out(*args: object) -> list[dict]:
    result = troupe_logs(*args, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_listing_merges_every_actors_log_in_time_order_one_line_per_event(run):
    run_dir, _ = run
    result = troupe_logs(run_dir)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(logged(run_dir))
    assert {line.split()[1] for line in lines} == {"driver", "echo-0", "echo-1"}
    assert [line[:12] for line in lines] == sorted(line[:12] for line in lines)  # HH:MM:SS.mmm, one day
    failed = [line for line in lines if " failed " in line]
    assert len(failed) == 1 and "test.raise_on_ask" in failed[0] and failed[0].endswith("ValueError: boom")
    assert any("send" in line and "-> echo-1" in line for line in lines)  # echo-0 addressed it by endpoint
    assert "\x1b[" not in result.stdout  # no colour into a pipe


def test_json_prints_the_logged_events_unchanged_in_time_order(run):
    run_dir, _ = run
    assert json_out(run_dir) == logged(run_dir)


def test_filters_select_by_role_instance_and_kind_and_combine_with_and(run):
    run_dir, _ = run
    echo_kinds = json_out(run_dir, "--role", "echo", "--kind", "test.echo")
    assert echo_kinds and {(e["role"], e["kind"]) for e in echo_kinds} == {("echo", "test.echo")}
    two = json_out(run_dir, "--instance", "echo-1", "--instance", "driver")
    assert {e["actor"] for e in two} == {"echo-1", "driver"}
    lifecycle = json_out(run_dir, "--kind", "actor.*")
    assert sorted((e["actor"], e["event"]) for e in lifecycle) == [
        ("echo-0", "actor.started"), ("echo-0", "actor.stopped"), ("echo-1", "actor.started"), ("echo-1", "actor.stopped"),
    ]


def test_errors_shows_only_the_failed_handler(run):
    run_dir, _ = run
    errors = json_out(run_dir, "--errors")
    assert [(e["actor"], e["event"], e["kind"], e["error"]) for e in errors] == [
        ("echo-0", "failed", "test.raise_on_ask", "ValueError: boom"),
    ]


def test_since_takes_a_duration_an_iso_time_or_a_unix_time(run):
    run_dir, _ = run
    everything = logged(run_dir)
    assert len(json_out(run_dir, "--since", "1h")) == len(everything)
    middle = everything[len(everything) // 2]["ts"]
    assert json_out(run_dir, "--since", middle) == [e for e in everything if e["ts"] >= middle]
    assert len(json_out(run_dir, "--since", datetime.fromtimestamp(everything[0]["ts"] - 1).isoformat())) == len(everything)
    later = troupe_logs(run_dir, "--since", time.time() + 3600)
    assert later.returncode == 0 and later.stdout == "" and "no matching events" in later.stderr
    bad = troupe_logs(run_dir, "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr and "a duration ago" in bad.stderr


def test_stats_report_each_edge_with_counts_latencies_and_failures(run):
    run_dir, _ = run
    rows = {(r["sender"], r["receiver"], r["kind"]): r for r in json_out(run_dir, "--stats")}
    assert {edge: (r["messages"], r["failed"]) for edge, r in rows.items()} == {
        ("client", "echo", "test.echo"): (1, 0),
        ("client", "echo", "test.raise_on_ask"): (1, 1),
        ("client", "echo", "test.forward"): (1, 0),
        ("echo", "echo", "test.echo"): (1, 0),
        ("echo", "echo", "test.echo_reply"): (1, 0),
        ("echo", "client", "test.echo_reply"): (2, 0),
        ("echo", "client", "troupe.failure"): (1, 0),
    }
    echo = rows[("client", "echo", "test.echo")]
    assert echo["bytes"] > 2000
    assert abs(echo["delivery_p50_ms"]) < 5000 and echo["delivery_p50_ms"] == echo["delivery_p99_ms"]
    assert echo["handle_p50_ms"] >= 0 and rows[("client", "echo", "test.raise_on_ask")]["handle_p50_ms"] is None
    forward = rows[("client", "echo", "test.forward")]
    assert forward["handle_p50_ms"] >= rows[("echo", "echo", "test.echo")]["handle_p50_ms"]  # it waited on echo-1
    table = troupe_logs(run_dir, "--stats")
    assert table.returncode == 0
    assert "deliver p50" in table.stdout and "handle p99" in table.stdout and "test.forward" in table.stdout


def test_trace_shows_one_requests_path_through_every_actor_as_a_timeline(run):
    run_dir, trace_id = run
    result = troupe_logs(run_dir, "--trace", trace_id)
    assert result.returncode == 0, result.stderr
    assert f"trace {trace_id}: 10 events" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    # Sorted by time; the sender's clock reading is taken after its send call returns, so
    # a receive can come a hair before its send: compare the steps, not their order.
    assert sorted((row[2], row[4], row[5]) for row in rows) == sorted([
        ("driver", "send", "test.forward"), ("echo-0", "receive", "test.forward"),
        ("echo-0", "send", "test.echo"), ("echo-1", "receive", "test.echo"), ("echo-1", "handled", "test.echo"),
        ("echo-1", "send", "test.echo_reply"), ("echo-0", "receive", "test.echo_reply"),
        ("echo-0", "handled", "test.forward"), ("echo-0", "send", "test.echo_reply"),
        ("driver", "receive", "test.echo_reply"),
    ])
    assert rows[0][0] == "0.000" and [float(row[0]) for row in rows] == sorted(float(row[0]) for row in rows)
    assert [e["trace_id"] for e in json_out(run_dir, "--trace", trace_id)] == [trace_id] * 10


def test_an_unknown_or_ambiguous_trace_is_an_error_exit_1(run):
    run_dir, trace_id = run
    unknown = troupe_logs(run_dir, "--trace", "no-such-trace")
    assert unknown.returncode == 1 and "no event has a trace id starting with 'no-such-trace'" in unknown.stderr
    ambiguous = troupe_logs(run_dir, "--trace", trace_id.split("-")[0])  # the driver's id prefix: 3 traces
    assert ambiguous.returncode == 1 and "3 trace ids start with" in ambiguous.stderr


def test_perfetto_writes_a_chrome_trace_with_tracks_slices_and_paired_flows(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "trace.json"
    result = troupe_logs(run_dir, "--perfetto", out)
    assert result.returncode == 0 and result.stdout == "" and "ui.perfetto.dev" in result.stderr
    document = json.loads(out.read_text())
    assert document["displayTimeUnit"] == "ms"
    trace = document["traceEvents"]
    processes = {e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "thread_name"}
    assert processes == {"client", "echo"} and threads == {"driver", "echo-0", "echo-1"}
    for event in trace:
        assert {"ph", "name", "pid"} <= event.keys()
        if event["ph"] != "M":
            assert event["ts"] >= 0 and "tid" in event
    handled = [e for e in trace if e["ph"] == "X" and e["cat"] in ("handled", "failed")]
    assert len(handled) == 4 and all(e["dur"] >= 0 for e in handled)
    starts = {e["id"]: e for e in trace if e["ph"] == "s"}
    ends = {e["id"]: e for e in trace if e["ph"] == "f"}
    assert len(starts) == 8 and starts.keys() == ends.keys()  # every message: both ends logged it
    assert all(ends[i]["bp"] == "e" and ends[i]["name"] == starts[i]["name"] for i in starts)


def test_a_missing_run_directory_or_one_without_logs_is_an_error_exit_2(tmp_path):
    missing = troupe_logs(tmp_path / "nope")
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    empty = troupe_logs(tmp_path)
    assert empty.returncode == 2 and "has no logs/ folder" in empty.stderr


def test_follow_prints_lines_as_they_are_completed_and_stops_cleanly_on_sigterm(run, tmp_path):
    shutil.copytree(run[0] / "logs", tmp_path / "logs")
    follower = subprocess.Popen(
        [TROUPE, "logs", tmp_path, "--follow", "--kind", "test.later"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True)
    reader.start()
    try:
        later = {"ts": time.time(), "run": "t", "actor": "late-0", "role": "late", "event": "send", "peer": "echo-0",
                 "kind": "test.later", "message_id": "m-late", "correlation_id": None, "trace_id": "tr-late",
                 "bytes": 5, "queue_s": None, "handle_s": None, "error": None}
        text = json.dumps(later) + "\n"
        with open(tmp_path / "logs" / "late-0.jsonl", "w") as file:  # a new file, written in two pieces
            file.write(text[:40])
            file.flush()
            time.sleep(0.6)
            assert lines.empty()  # half a line is not an event yet
            file.write(text[40:])
        line = lines.get(timeout=10)
        assert "late-0" in line and "test.later" in line and "-> echo-0" in line and "tr-late" in line
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=10)
    assert code == 0
    reader.join(timeout=5)
    assert follower.stderr.read() == ""
    follower.stderr.close()
