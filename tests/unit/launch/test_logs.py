"""launch.logs on hand-built log lines: reading, filters, traces, stats and the Perfetto export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from launch.logs import (
    EdgeStats, EventFilter, LogReader, Names, TraceLookupError, clock, edge_stats, event_cells, human_bytes,
    kind_matches, parse_line, parse_since, perfetto_trace, read_logs, resolve_trace, select,
    trace_timeline,
)


def message(event, actor, role, peer, kind, message_id, ts, *, trace="t-1", nbytes=100,
            queue_s=None, handle_s=None, error=None):
    return {
        "run": "r", "actor": actor, "role": role, "ts": ts, "peer": peer, "kind": kind, "message_id": message_id,
        "correlation_id": None, "trace_id": trace, "bytes": nbytes, "queue_s": queue_s, "handle_s": handle_s,
        "error": error, "event": event,
    }


def lifecycle(event, actor, role, ts, **fields):
    return {"run": "r", "actor": actor, "role": role, "ts": ts, **fields, "event": event}


def write_log(logs_dir: Path, name: str, lines: list, tail: str = "") -> Path:
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{name}.jsonl"
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text + tail)
    return path


@pytest.fixture
def utc():
    """Local time is UTC for the test (clock() and naive ISO times use the local zone)."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if previous is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = previous
    time.tzset()


# ------------------------------------------------------------------ reading
def test_files_are_merged_in_time_order_even_when_a_file_is_not(tmp_path):
    logs = tmp_path / "logs"
    write_log(logs, "a-0", [lifecycle("actor.stopped", "a-0", "a", 5.0, crashed=False),
                            message("send", "a-0", "a", "b-0", "k", "m1", 1.0)])
    write_log(logs, "b-0", [message("receive", "b-0", "b", "a-0", "k", "m1", 2.0),
                            lifecycle("actor.started", "b-0", "b", 0.5)])
    events, warnings = read_logs(logs)
    assert [(e["ts"], e["actor"], e["event"]) for e in events] == [
        (0.5, "b-0", "actor.started"), (1.0, "a-0", "send"), (2.0, "b-0", "receive"), (5.0, "a-0", "actor.stopped"),
    ]
    assert warnings == []


def test_an_unparsable_last_line_is_skipped_without_a_warning(tmp_path):
    logs = tmp_path / "logs"
    write_log(logs, "a-0", [message("send", "a-0", "a", "b-0", "k", "m1", 1.0)], tail='{"ts": 2.0, "ev')
    events, warnings = read_logs(logs)
    assert [e["message_id"] for e in events] == ["m1"]
    assert warnings == []


def test_a_malformed_line_in_the_middle_is_reported_with_file_and_line_and_skipped(tmp_path):
    logs = tmp_path / "logs"
    path = write_log(logs, "a-0", [
        message("send", "a-0", "a", "b-0", "k", "m1", 1.0),
        '{"ts": 2.0, "ev{"ts": 3.0}',
        "[1, 2]",
        message("send", "a-0", "a", "b-0", "k", "m2", 4.0),
    ])
    events, warnings = read_logs(logs)
    assert [e["message_id"] for e in events] == ["m1", "m2"]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{path}:2: not JSON")
    assert warnings[1] == f"{path}:3: not a JSON object but list"


def test_a_line_needs_a_numeric_ts_and_an_event_name():
    assert parse_line(b'{"ts": 1, "event": "send"}') == {"ts": 1, "event": "send"}
    for raw in ('{"event": "send"}', '{"ts": "1", "event": "send"}', '{"ts": true, "event": "x"}', '{"ts": 1}'):
        with pytest.raises(ValueError, match="numeric 'ts'"):
            parse_line(raw)


def test_the_reader_consumes_only_complete_lines_while_a_writer_is_mid_line(tmp_path):
    logs = tmp_path / "logs"
    first = json.dumps(message("send", "a-0", "a", "b-0", "k", "m1", 1.0))
    second = json.dumps(message("send", "a-0", "a", "b-0", "k", "m2", 2.0))
    path = write_log(logs, "a-0", [first], tail=second[:20])
    reader = LogReader(logs)
    events, warnings = reader.read_new()
    assert [e["message_id"] for e in events] == ["m1"] and warnings == []
    assert reader.read_new() == ([], [])
    with open(path, "a") as file:
        file.write(second[20:] + "\n")
    events, warnings = reader.read_new()
    assert [e["message_id"] for e in events] == ["m2"] and warnings == []


def test_the_reader_picks_up_files_that_appear_later(tmp_path):
    logs = tmp_path / "logs"
    write_log(logs, "a-0", [message("send", "a-0", "a", "b-0", "k", "m1", 1.0)])
    reader = LogReader(logs)
    assert len(reader.read_new()[0]) == 1
    write_log(logs, "b-0", [message("receive", "b-0", "b", "a-0", "k", "m1", 2.0)])
    events, _ = reader.read_new()
    assert [(e["actor"], e["event"]) for e in events] == [("b-0", "receive")]


def test_a_malformed_line_seen_while_following_is_reported_with_its_line_number(tmp_path):
    logs = tmp_path / "logs"
    path = write_log(logs, "a-0", [message("send", "a-0", "a", "b-0", "k", "m1", 1.0)])
    reader = LogReader(logs)
    reader.read_new()
    with open(path, "a") as file:
        file.write("garbage\n")
    events, warnings = reader.read_new()
    assert events == [] and len(warnings) == 1 and warnings[0].startswith(f"{path}:2: not JSON (")


# ---------------------------------------------------------------- filtering
def test_since_accepts_durations_iso_times_and_unix_times(utc):
    now = 1_000_000.0
    assert parse_since("30s", now) == now - 30
    assert parse_since("5m", now) == now - 300
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 129600
    assert parse_since("1714566600.5", now) == 1714566600.5
    assert parse_since("2024-05-01T12:30:00Z", now) == 1714566600
    assert parse_since("2024-05-01T12:30:00+02:00", now) == 1714559400
    assert parse_since("2024-05-01T12:30:00", now) == 1714566600  # local time, UTC here


@pytest.mark.parametrize("text", ["", "5x", "yesterday", "-5m", "2024-13-01", "nan", "inf"])
def test_since_rejects_anything_else_and_says_what_it_accepts(text):
    with pytest.raises(ValueError, match="a duration ago .* an ISO-8601 time .* a unix timestamp"):
        parse_since(text, 0.0)


def test_kind_patterns_match_exactly_or_by_prefix_with_a_star():
    assert kind_matches("registry.register", ("registry.*",))
    assert kind_matches("gen.request", ("other", "gen.request"))
    assert not kind_matches("gen.request_more", ("gen.request",))
    assert not kind_matches("troupe.ok", ("registry.*",))
    assert kind_matches("anything", ("*",))


RUN = [
    lifecycle("actor.started", "gen-0", "generator", 0.0, endpoint="tcp://h:1", pid=7),
    message("send", "driver", "client", "tcp://h:1", "gen.request", "m1", 1.0, trace="abc-1"),
    message("receive", "gen-0", "generator", "driver", "gen.request", "m1", 2.0, trace="abc-1"),
    message("failed", "gen-0", "generator", "driver", "gen.request", "m1", 3.0, trace="abc-1",
            queue_s=0.5, handle_s=0.5, error="ValueError: x"),
    message("send", "gen-0", "generator", "trainer-0", "gen.batch", "m2", 4.0, trace="abc-10"),
    message("receive", "trainer-0", "trainer", "gen-0", "gen.batch", "m2", 5.0, trace="abc-10"),
    lifecycle("registry.unreachable", "trainer-0", "trainer", 6.0, error="timed out"),
    lifecycle("actor.stopped", "gen-0", "generator", 7.0, crashed=True),
    lifecycle("actor.stopped", "trainer-0", "trainer", 8.0, crashed=False),
]


def kept(event_filter, names=None):
    return [e["ts"] for e in select(RUN, event_filter, names)]


def test_a_repeated_flag_matches_any_of_its_values_and_flags_combine_with_and():
    assert kept(EventFilter(roles=("client", "trainer"))) == [1.0, 5.0, 6.0, 8.0]
    assert kept(EventFilter(roles=("client", "trainer"), kinds=("gen.*",))) == [1.0, 5.0]
    assert kept(EventFilter(instances=("gen-0",), since=3.0)) == [3.0, 4.0, 7.0]
    assert kept(EventFilter(instances=("gen-0",), roles=("trainer",))) == []


def test_kind_matches_a_lifecycle_lines_event_name():
    assert kept(EventFilter(kinds=("actor.*",))) == [0.0, 7.0, 8.0]
    assert kept(EventFilter(kinds=("registry.*",))) == [6.0]


def test_errors_keeps_failures_crashes_and_lifecycle_errors():
    assert kept(EventFilter(errors=True)) == [3.0, 6.0, 7.0]


def test_a_trace_filter_matches_the_whole_id_unless_it_is_a_prefix():
    assert kept(EventFilter(trace="abc-1")) == [1.0, 2.0, 3.0]
    assert kept(EventFilter(trace="abc-1", trace_prefix=True)) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_with_names_role_and_instance_also_match_the_peer_so_both_halves_of_an_edge_stay():
    names = Names.from_events(RUN)
    assert kept(EventFilter(roles=("client",)), names) == [1.0, 2.0, 3.0]
    assert kept(EventFilter(instances=("gen-0",)), names) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0]


def test_names_map_endpoints_to_actors_and_actors_to_roles():
    names = Names.from_events(RUN)
    assert names.actor("tcp://h:1") == "gen-0"
    assert names.role("tcp://h:1") == "generator"
    assert names.role("driver") == "client"
    assert names.role("stranger") == "stranger"


# -------------------------------------------------------------------- trace
def test_a_trace_is_found_by_its_full_id_or_a_unique_prefix():
    assert resolve_trace(RUN, "abc-1") == "abc-1"  # exact, though "abc-10" starts with it too
    assert resolve_trace(RUN, "abc-10") == "abc-10"
    with pytest.raises(TraceLookupError, match=r"2 trace ids start with 'abc' \(abc-1, abc-10\)"):
        resolve_trace(RUN, "abc")
    with pytest.raises(TraceLookupError, match="no event has a trace id starting with 'zzz'"):
        resolve_trace(RUN, "zzz")


def test_a_trace_timeline_gives_offsets_and_gaps_in_ms_in_time_order():
    events = [
        message("receive", "b-0", "b", "a-0", "k", "m1", 10.25, trace="t"),
        message("send", "a-0", "a", "b-0", "k", "m1", 10.0, trace="t"),
        message("send", "a-0", "a", "b-0", "k", "m9", 10.1, trace="other"),
        message("handled", "b-0", "b", "a-0", "k", "m1", 11.0, trace="t", queue_s=0.5, handle_s=0.25),
    ]
    steps = trace_timeline(events, "t")
    assert [(s.offset_ms, s.gap_ms, s.event["event"]) for s in steps] == [
        (0.0, 0.0, "send"), (250.0, 250.0, "receive"), (1000.0, 750.0, "handled"),
    ]


# -------------------------------------------------------------------- stats
def test_stats_count_sends_per_edge_and_join_receives_for_delivery_latency():
    events = [
        lifecycle("actor.started", "gen-0", "generator", 0.0, endpoint="tcp://h:1"),
        # the driver addresses gen-0 by endpoint; the join by message_id finds its role anyway
        message("send", "driver", "client", "tcp://h:1", "gen.request", "m1", 10.000, nbytes=100),
        message("receive", "gen-0", "generator", "driver", "gen.request", "m1", 10.002, nbytes=100),
        message("handled", "gen-0", "generator", "driver", "gen.request", "m1", 10.012, queue_s=0.0, handle_s=0.010),
        message("send", "driver", "client", "gen-1", "gen.request", "m2", 10.100, nbytes=300),
        message("receive", "gen-1", "generator", "driver", "gen.request", "m2", 10.106, nbytes=300),
        message("handled", "gen-1", "generator", "driver", "gen.request", "m2", 10.140, queue_s=0.0, handle_s=0.030),
        message("send", "driver", "client", "gen-1", "gen.request", "m3", 10.200, nbytes=50),
        message("receive", "gen-1", "generator", "driver", "gen.request", "m3", 10.204, nbytes=50),
        message("failed", "gen-1", "generator", "driver", "gen.request", "m3", 10.206,
                queue_s=0.0, handle_s=0.001, error="ValueError: x"),
        message("send", "gen-0", "generator", "trainer-0", "gen.batch", "m4", 11.0, nbytes=1000),
        message("receive", "trainer-0", "trainer", "gen-0", "gen.batch", "m4", 11.001, nbytes=1000),
        message("handled", "trainer-0", "trainer", "gen-0", "gen.batch", "m4", 11.5, queue_s=0.0, handle_s=0.499),
        # an undelivered send, logged by the sender
        message("failed", "gen-0", "generator", "trainer-0", "gen.batch", "m6", 13.0, error="not delivered"),
        # a sender that keeps no log: counted from the receiver's side
        message("receive", "trainer-0", "trainer", "ext", "trainer.poke", "m5", 12.0, nbytes=7),
        message("handled", "trainer-0", "trainer", "ext", "trainer.poke", "m5", 12.01, queue_s=0.0, handle_s=0.002),
    ]
    rows = edge_stats(events)
    assert [tuple(row) for row in rows] == [
        pytest.approx(("client", "generator", "gen.request", 3, 450, 4.0, 6.0, 10.0, 30.0, 1)),
        pytest.approx(("ext", "trainer", "trainer.poke", 1, 7, None, None, 2.0, 2.0, 0)),
        pytest.approx(("generator", "trainer", "gen.batch", 1, 1000, 1.0, 1.0, 499.0, 499.0, 1)),
    ]
    assert isinstance(rows[0], EdgeStats) and rows[0]._asdict()["messages"] == 3


# ----------------------------------------------------------------- perfetto
def test_the_perfetto_trace_has_a_process_per_role_a_thread_per_actor_and_slices_in_microseconds():
    events = [
        lifecycle("actor.started", "b-0", "B", 99.5, endpoint="tcp://h:2"),
        message("send", "a-0", "A", "b-0", "k", "m1", 100.0),
        message("receive", "b-0", "B", "a-0", "k", "m1", 100.25),
        message("handled", "b-0", "B", "a-0", "k", "m1", 100.75, queue_s=0.25, handle_s=0.25),
        message("send", "b-0", "B", "nobody", "k.reply", "m2", 101.0),  # no receiver log: no arrow
    ]
    document = json.loads(json.dumps(perfetto_trace(events)))
    assert document["displayTimeUnit"] == "ms"
    trace = document["traceEvents"]
    assert [e for e in trace if e["ph"] == "M"] == [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "A"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "B"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 3, "args": {"name": "a-0"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 4, "args": {"name": "b-0"}},
    ]
    slices = [(e["cat"], e["name"], e["ts"], e["dur"], e["pid"], e["tid"]) for e in trace if e["ph"] == "X"]
    assert slices == [
        ("send", "k -> b-0", 500000.0, 1.0, 1, 3),
        ("receive", "k <- a-0", 750000.0, 1.0, 2, 4),
        ("handled", "k", 1000000.0, 250000.0, 2, 4),  # starts at ts - handle_s
        ("send", "k.reply -> nobody", 1500000.0, 1.0, 2, 4),
    ]
    instants = [(e["name"], e["ts"], e["s"]) for e in trace if e["ph"] == "i"]
    assert instants == [("actor.started", 0.0, "t")]
    flows = [e for e in trace if e["ph"] in ("s", "f")]
    assert flows == [
        {"ph": "s", "id": 1, "name": "k", "cat": "message", "ts": 500000.5, "pid": 1, "tid": 3},
        {"ph": "f", "bp": "e", "id": 1, "name": "k", "cat": "message", "ts": 750000.5, "pid": 2, "tid": 4},
    ]


def test_every_perfetto_flow_start_has_exactly_one_end_with_the_same_id():
    events = []
    for index in range(5):
        events.append(message("send", "a-0", "A", "b-0", "k", f"m{index}", 10.0 + index))
        events.append(message("receive", "b-0", "B", "a-0", "k", f"m{index}", 10.5 + index))
    trace = perfetto_trace(events)["traceEvents"]
    starts = sorted(e["id"] for e in trace if e["ph"] == "s")
    ends = sorted(e["id"] for e in trace if e["ph"] == "f")
    assert starts == ends == [1, 2, 3, 4, 5]


def test_an_empty_selection_is_an_empty_trace():
    assert perfetto_trace([]) == {"traceEvents": [], "displayTimeUnit": "ms"}


# --------------------------------------------------------------- formatting
def test_bytes_are_shown_in_binary_units():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**3, 2048 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB", "2048.0 GiB",
    ]


def test_event_cells_show_local_time_direction_timing_error_and_trace(utc):
    names = Names.from_events([lifecycle("actor.started", "b-0", "B", 0.0, endpoint="tcp://h:2")])
    assert clock(18062.0456) == "05:01:02.045"
    send = message("send", "a-0", "A", "tcp://h:2", "k", "m1", 18062.0456, nbytes=2048, trace="0123456789abcdefghij")
    assert event_cells(send, names) == (
        "05:01:02.045", "a-0", "send", "k", "-> b-0", "2.0 KiB", "", "0123456789abcdefgh", "",
    )
    failed = message("failed", "b-0", "B", "a-0", "k", "m1", 18062.5, queue_s=0.00125, handle_s=0.5, error="ValueError: x")
    assert event_cells(failed, names)[4:] == ("   a-0", "100 B", "q 1.25 ms  h 500.00 ms", "t-1", "ValueError: x")
    stopped = lifecycle("actor.stopped", "b-0", "B", 18063.0, crashed=True)
    assert event_cells(stopped, names) == ("05:01:03.000", "b-0", "actor.stopped", "", "", "", "", "", "crashed=true")
