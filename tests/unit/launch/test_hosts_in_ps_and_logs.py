"""Where each actor runs, in `troupe logs` (learnt from the registry's lines) and `troupe ps`."""

from __future__ import annotations

import json

from rich.console import Console

from launch.cmd_ps import ps_table
from launch.logs import Names, event_cells, perfetto_trace, read_logs
from tests.unit.launch.test_logs import lifecycle, message, write_log


def joined(name, host, ts, endpoint=None):
    """The registry's line for an actor that registered (runtime.registry)."""
    return lifecycle("registry.joined", "registry", "registry", ts, name=name, instance=0, host=host, pid=7,
                     endpoint=endpoint or f"tcp://10.0.0.1:{4000 + len(name)}", capabilities=None)


def test_the_host_of_every_actor_comes_from_the_registrys_lines_and_the_registry_states_its_own():
    names = Names.from_events([
        lifecycle("registry.serving", "registry", "registry", 0.0, host="batch", endpoint="tcp://10.0.0.1:1"),
        joined("trainer-0", "node1", 1.0),
        joined("generator-0", "node2", 1.1, endpoint="tcp://10.0.0.2:5000"),
        lifecycle("registry.left", "registry", "registry", 1.2, name="generator-0", host="node2", pid=7, reason="x"),
    ])
    assert names.hosts == {"registry": "batch", "trainer-0": "node1", "generator-0": "node2"}
    assert names.host("tcp://10.0.0.2:5000") == "node2"  # a peer addressed by its endpoint
    assert names.located("trainer-0") == "trainer-0@node1" and names.located("driver") == "driver"


def test_an_actor_registered_again_from_another_host_has_the_host_it_registered_from_last():
    names = Names.from_events([joined("stage-1", "node1", 1.0), joined("stage-1", "node2", 2.0)])
    assert names.host("stage-1") == "node2"


def test_the_listing_shows_actor_at_host_and_the_peer_by_name(tmp_path):
    logs = tmp_path / "logs"
    write_log(logs, "registry", [joined("a-0", "node1", 0.1, endpoint="tcp://10.0.0.1:2"),
                                 joined("b-0", "node2", 0.2, endpoint="tcp://10.0.0.2:2")])
    write_log(logs, "a-0", [message("send", "a-0", "A", "tcp://10.0.0.2:2", "k", "m1", 1.0)])
    write_log(logs, "b-0", [message("receive", "b-0", "B", "a-0", "k", "m1", 1.5)])
    events, warnings = read_logs(logs)
    names = Names.from_events(events)
    cells = [event_cells(event, names)[1:5] for event in events if event["event"] in ("send", "receive")]
    assert warnings == [] and cells == [("a-0@node1", "send", "k", "-> b-0"), ("b-0@node2", "receive", "k", "<- a-0")]


def test_a_run_whose_logs_name_no_host_lists_actors_as_before():
    names = Names.from_events([lifecycle("actor.started", "b-0", "B", 0.0, endpoint="tcp://h:2")])
    assert event_cells(lifecycle("actor.stopped", "b-0", "B", 1.0), names)[1] == "b-0"


def test_perfetto_names_each_actors_thread_with_its_host():
    events = [joined("a-0", "node1", 0.0), message("send", "a-0", "A", "b-0", "k", "m1", 1.0)]
    threads = {item["args"]["name"] for item in json.loads(json.dumps(perfetto_trace(events)))["traceEvents"]
               if item["name"] == "thread_name"}
    assert threads == {"a-0@node1", "registry"}


def test_ps_shows_the_host_each_actor_registered_from_and_a_dash_before_it_has():
    def row(name, host, state="ready"):
        return {"name": name, "role": name.split("-")[0], "pid": 11 if host else None, "host": host, "state": state,
                "uptime_s": 5.0, "messages_in": 3, "messages_out": 4, "weights_version": None, "restarts": 0,
                "attached": False, "endpoint": None}

    console = Console(width=200, color_system=None)
    with console.capture() as captured:
        console.print(ps_table([row("trainer-0", "node1"), row("generator-0", "node2"), row("reward-0", None, "starting")]))
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in captured.get().splitlines() if "-0 " in line]
    assert [row[:5] for row in rows] == [  # name, role, state, pid, host; by role
        ["generator-0", "generator", "ready", "11", "node2"],
        ["reward-0", "reward", "starting", "-", "-"],
        ["trainer-0", "trainer", "ready", "11", "node1"],
    ]
