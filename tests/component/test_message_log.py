"""The structured message log: one JSON line per message event, trace ids across actors."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.client import Client
from runtime.msglog import MESSAGE_EVENT_KEYS
from tests.component.actors import Echo, Forward, RaiseOnAsk

ECHOER = "tests.component.actors:Echoer"


def read_log(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / f"{name}.jsonl").read_text().splitlines()]


def message_events(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["event"] in ("send", "receive", "handled", "failed")]


async def test_a_trace_id_follows_a_request_through_every_actor_it_touches(spawn, tmp_path):
    front = await spawn(ECHOER, "front-0", run_dir=tmp_path, run="trace-test")
    back = await spawn(ECHOER, "back-0", run_dir=tmp_path, run="trace-test")
    async with Client("driver", run_dir=tmp_path, run="trace-test") as client:
        reply = await client.ask(front.endpoint, Forward(back.endpoint, "hop"))
        unrelated = await client.ask(back.endpoint, Echo("alone"))
    await front.stop()
    await back.stop()

    assert reply.value == "hop"
    # The back actor saw the forwarded echo under the trace the driver started.
    assert reply.trace_id is not None and reply.trace_id != unrelated.trace_id
    logs = {name: message_events(read_log(tmp_path, name)) for name in ("driver", "front-0", "back-0")}
    traced = {name: [e for e in events if e["trace_id"] == reply.trace_id] for name, events in logs.items()}
    assert [(e["event"], e["kind"]) for e in traced["driver"]] == [
        ("send", "test.forward"), ("receive", "test.echo_reply"),
    ]
    assert [(e["event"], e["kind"]) for e in traced["front-0"]] == [
        ("receive", "test.forward"), ("send", "test.echo"), ("receive", "test.echo_reply"),
        ("handled", "test.forward"), ("send", "test.echo_reply"),
    ]
    assert [(e["event"], e["kind"]) for e in traced["back-0"]] == [
        ("receive", "test.echo"), ("handled", "test.echo"), ("send", "test.echo_reply"),
    ]
    for name, events in traced.items():
        for event in events:
            assert event["run"] == "trace-test" and event["actor"] == name


async def test_every_message_event_line_has_the_documented_keys_and_values(spawn, tmp_path):
    echo = await spawn(ECHOER, "echo-0", run_dir=tmp_path)
    async with Client("driver", run_dir=tmp_path) as client:
        await client.ask(echo.endpoint, Echo("x" * 1000))
        try:
            await client.ask(echo.endpoint, RaiseOnAsk("nope"))
        except Exception:  # the remote error is what this test wants logged
            pass
    await echo.stop()
    events = message_events(read_log(tmp_path, "echo-0"))
    for event in events:
        assert set(MESSAGE_EVENT_KEYS) <= event.keys(), event
        assert event["role"] == "echo" and event["actor"] == "echo-0"
        assert event["bytes"] > 0
    handled = [e for e in events if e["event"] == "handled"]
    assert len(handled) == 1 and handled[0]["kind"] == "test.echo"
    assert handled[0]["queue_s"] >= 0 and handled[0]["handle_s"] >= 0
    received = [e for e in events if e["event"] == "receive" and e["kind"] == "test.echo"]
    assert received[0]["bytes"] > 1000 and received[0]["peer"] == "driver"
    failed = [e for e in events if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "ValueError: nope"
    lifecycle = [line["event"] for line in read_log(tmp_path, "echo-0") if line["event"].startswith("actor.")]
    assert lifecycle == ["actor.started", "actor.stopped"]
