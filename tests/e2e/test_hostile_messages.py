"""A live run survives a flood of malformed and hostile messages.

A run of the pipeline's stage and sink (no producer, so nothing is stored unless the
flood gets something through) is sent more than ten thousand messages, from a peer
that holds the run's secret (the worst case: past authentication) and from one that
does not. Afterwards no actor has crashed or restarted, nothing was stored, memory
grew by a bounded amount, and supervision still works: a role killed after the flood
comes back.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
import torch
import yaml
import zmq

from protocols.codec import encode_payload
from protocols.envelope import Envelope, encode_envelope, new_id
from tests.e2e.cli import ps, troupe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

MESSAGES_PER_TARGET = 3000
"""Stage, sink, supervisor and registry each get this many: 12,000 in all."""


def write_topology(tmp_path: Path) -> Path:
    topology = {
        "name": "hostile",
        "runtime": {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 4.0},
        "stop_timeout_s": 10,
        "roles": {
            "stage": {"entry": "pipeline-stage", "restart": {"policy": "on-failure", "max_restarts": 2, "backoff_s": 0.2}},
            "sink": {"entry": "pipeline-sink", "restart": {"policy": "on-failure", "max_restarts": 2, "backoff_s": 0.2}},
        },
    }
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def envelope(kind: str, payload: Any, *, ask: bool = True, **fields: Any) -> list[Any]:
    message = Envelope(kind=kind, message_id=new_id(), sender="fuzzer", sent_at=time.time(), payload=payload,
                       expects_reply=ask, deadline=time.time() + 30 if ask else None, **fields)
    return encode_envelope(message)[0]


def forged_header(**changes: Any) -> list[Any]:
    """A well-formed header with some fields replaced by wrong values."""
    frames = envelope("pipeline.store", {"index": 1, "checksum": 1.0, "stage": "x"})
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header)]


def tensor_message(kind: str, fields: dict[str, Any], tensor: torch.Tensor, ask: bool) -> list[Any]:
    return envelope(kind, {**fields, "values": tensor}, ask=ask)


def hostile_messages(rng: random.Random, count: int) -> Iterator[list[Any]]:
    """`count` messages, cycling through every kind of bad input the runtime must refuse."""
    bad_tensors = [
        torch.zeros(2, 2, dtype=torch.complex64), torch.zeros(2, 2, dtype=torch.int64), torch.zeros(8),
        torch.zeros(1, 2, 3), torch.zeros(2, 2).to(torch.float8_e4m3fn), torch.zeros(0, dtype=torch.bool),
    ]
    makers = [
        lambda: [rng.randbytes(rng.randint(0, 64))],                                        # garbage
        lambda: [b"\xdd\xff\xff\xff\xff"],                                                  # truncated array claim
        lambda: envelope("no.such.kind", {"x": 1}),                                          # unknown kinds
        lambda: envelope("rl.checkpoint.load", {"path": "/etc"}),                            # paths outside the run
        lambda: envelope("rl.checkpoint.save", {"path": "../../../tmp/owned"}, ask=False),
        lambda: tensor_message("pipeline.item", {"index": rng.randint(0, 99)}, rng.choice(bad_tensors), rng.random() < 0.5),
        lambda: envelope("pipeline.store", {"index": "one", "checksum": 1.0, "stage": "x"}),  # wrong types: never stored
        lambda: envelope("pipeline.store", {"index": 1}, ask=False),                          # missing fields
        lambda: envelope("pipeline.store", {"index": 1, "checksum": 1.0, "stage": "x", "extra": 1}),
        lambda: envelope("troupe.ok", {}, ask=False, correlation_id=new_id()),               # replies to nothing
        lambda: envelope("troupe.failure", {"error_type": "X", "message": "y"}, ask=False, correlation_id=new_id()),
        lambda: envelope("troupe.credit", {}, ask=False, credits=(2**40, 2**60)),           # credit never owed
        lambda: forged_header(schema_version=99),
        lambda: forged_header(sent_at=float("nan")),
        lambda: forged_header(tensors=[["float32", [2**40], 1, "torch"]]),
        lambda: forged_header(tensors=[["uint8", [16], ["../../../etc/passwd", 0, 16, 1], "torch"]]),  # shared
        lambda: forged_header(tensors=[["uint8", [16], [f"troupe.hostile.1.{rng.randbytes(6).hex()}.1", 0, 16, 1], "torch"]]),
        lambda: forged_header(deadline=time.time() - 60),                                    # expired on arrival
        lambda: envelope("supervision.stop_instance", {"name": 7}),                          # control messages, malformed
        lambda: envelope("supervision.attach", {"role": "stage", "count": 10_000}),
        lambda: envelope("supervision.attach", {"role": "nope", "count": 1}),
        lambda: envelope("supervision.stop_instance", {"name": "no-such-instance"}),
        lambda: envelope("registry.register", {"record": {"name": 1}}),
        lambda: envelope("registry.heartbeat", {"name": "stage-0"}),
    ]
    for index in range(count):
        yield makers[index % len(makers)]()


def expensive_messages() -> list[list[Any]]:
    """A few messages that cost the most to refuse: headers over the limit, and payloads
    of a million tiny containers (within the header limit)."""
    oversized = envelope("pipeline.store", {"index": 1, "checksum": 1.0, "stage": "x" * (9 << 20)})
    packed, _, _ = encode_payload(None)
    bomb_header = msgpack.unpackb(envelope("pipeline.store", {})[0])
    bomb_header["payload"] = b"\xdd" + (3 << 20).to_bytes(4, "big") + b"\x90" * (3 << 20)
    return [oversized] * 4 + [[msgpack.packb(bomb_header)]] * 4


def dealer(endpoint: str, secret: str | None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    if secret is not None:
        sock.plain_username, sock.plain_password = b"troupe", secret.encode()
    sock.connect(endpoint)
    return sock


def flood(endpoint: str, secret: str | None, messages: Iterator[list[Any]]) -> tuple[int, int]:
    """Send every message, reading whatever comes back; (sent, replies read).

    Without the secret the handshake fails and ZeroMQ drops the connection and retries:
    while it is down a send has no peer to queue for. Such a message is offered without
    blocking and counted as sent (the peer refused it before it could be delivered)."""
    sock = dealer(endpoint, secret)
    sent = replies = 0
    try:
        for frames in messages:
            try:
                sock.send_multipart(frames, flags=0 if secret is not None else zmq.NOBLOCK)
            except zmq.Again:
                assert secret is None, "an authenticated peer stopped taking messages"
            sent += 1
            while sock.poll(0):
                sock.recv_multipart()
                replies += 1
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sock.poll(200):
            sock.recv_multipart()
            replies += 1
    finally:
        sock.close(linger=0)
    return sent, replies


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_a_run_survives_ten_thousand_hostile_messages_and_still_supervises(tmp_path, run_dir):
    started = troupe("launch", str(write_topology(tmp_path)), "--run-dir", str(run_dir), "--detach")
    assert started.returncode == 0, started.stderr
    info = json.loads((run_dir / "registry.json").read_text())
    secret = Path(info["secret_file"]).read_text().strip()
    try:
        before = ps(run_dir)
        pids = {name: before[name]["pid"] for name in ("stage-0", "sink-0")}
        memory_before = {name: rss_mb(pid) for name, pid in {**pids, "launcher": info["launcher_pid"]}.items()}
        targets = {
            "stage-0": before["stage-0"]["endpoint"], "sink-0": before["sink-0"]["endpoint"],
            "supervisor": info["supervisor"], "registry": info["registry"],
        }
        rng = random.Random(14)
        total = 0
        for name, endpoint in targets.items():
            sent, replies = flood(endpoint, secret, hostile_messages(rng, MESSAGES_PER_TARGET))
            total += sent
            assert replies > 0, f"{name} answered none of the asks"  # refusals come back as typed failures
        for name in ("stage-0", "sink-0"):
            total += flood(targets[name], secret, iter(expensive_messages()))[0]
        # Without the secret nothing gets past the handshake: not even a reply.
        sent, replies = flood(targets["sink-0"], None, (envelope("pipeline.store", {"index": i, "checksum": 1.0, "stage": "x"})
                                                       for i in range(500)))
        total += sent
        assert replies == 0
        assert total >= 10_000

        after = ps(run_dir)
        for name, pid in pids.items():
            assert after[name]["pid"] == pid and after[name]["restarts"] == 0, after[name]
            assert after[name]["state"] == "ready"
        assert not list((run_dir / "pipeline").glob("*.jsonl")) or all(
            path.read_text() == "" for path in (run_dir / "pipeline").glob("*.jsonl")), "an injected item was stored"
        for name, pid in {**pids, "launcher": info["launcher_pid"]}.items():
            grown = rss_mb(pid) - memory_before[name]
            assert grown < 400, f"{name} grew by {grown:.0f} MB"
        sink_log = run_dir / "logs" / "sink-0.jsonl"
        wait_for(lambda: '"security.refused"' in sink_log.read_text(), 10, "the sink to log the unauthenticated peer")

        # Supervision still works: a role killed now comes back.
        os.kill(pids["stage-0"], signal.SIGKILL)
        wait_for(lambda: ps(run_dir)["stage-0"]["restarts"] == 1 and ps(run_dir)["stage-0"]["state"] == "ready", 60,
                 "stage-0 to be restarted")
    finally:
        assert troupe("stop", str(run_dir)).returncode == 0
