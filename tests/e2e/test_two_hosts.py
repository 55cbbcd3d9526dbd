"""Two hosts on one machine: a network namespace joins a run over CURVE-authenticated tcp.

The root namespace is host A (10.213.N.1); a fresh namespace is host B (10.213.N.2),
linked by a veth pair. The run binds host A's address with CURVE on; `troupe attach
--here` inside host B starts a stage there that registers, gets work across the
link, and stores results in host A's sink. A peer in host B without the run's
keys is refused. Skipped where network namespaces cannot be made (not root, no
`ip`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import TROUPE, ps, stored_indices, troupe, wait_for, write_topology

SUBNET = f"10.213.{os.getpid() % 200 + 20}"
HOST_A, HOST_B = f"{SUBNET}.1", f"{SUBNET}.2"


def sh(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture
def host_b():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name, veth_a, veth_b = f"troupe-b{os.getpid()}", f"tra{os.getpid() % 100000}", f"trb{os.getpid() % 100000}"
    if sh("ip", "netns", "add", name).returncode != 0:
        pytest.skip("this machine does not allow network namespaces")
    try:
        for command in (
            ("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
            ("ip", "link", "set", veth_b, "netns", name),
            ("ip", "addr", "add", f"{HOST_A}/24", "dev", veth_a),
            ("ip", "link", "set", veth_a, "up"),
            ("ip", "netns", "exec", name, "ip", "addr", "add", f"{HOST_B}/24", "dev", veth_b),
            ("ip", "netns", "exec", name, "ip", "link", "set", veth_b, "up"),
            ("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"),
        ):
            result = sh(*command)
            if result.returncode != 0:
                pytest.skip(f"cannot build the two-host network: {' '.join(command)}: {result.stderr.strip()}")
        yield name
    finally:
        sh("ip", "link", "del", veth_a)
        sh("ip", "netns", "del", name)


def test_a_stage_on_a_second_host_joins_over_curve_and_gets_work(tmp_path, run_dir, host_b):
    topology = write_topology(tmp_path, items=3000, interval_s=0.02)
    started = troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach",
                     "--set", f"network.host={HOST_A}", "--set", "network.curve=true")
    assert started.returncode == 0, started.stderr
    info = json.loads((run_dir / "registry.json").read_text())
    assert info["registry"].startswith(f"tcp://{HOST_A}:") and info["curve_keys_dir"]

    refused = subprocess.run(
        ["ip", "netns", "exec", host_b, str(Path(TROUPE).parent / "python"), "-c", UNAUTHENTICATED_PING, info["registry"]],
        capture_output=True, text=True, timeout=30,
    )
    assert refused.stdout.strip() == "no answer", refused.stdout + refused.stderr

    attach = subprocess.Popen(
        ["ip", "netns", "exec", host_b, TROUPE, "attach", str(run_dir), "stage", "--here",
         "--registry", info["registry"], "--host", HOST_B],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        remote = wait_for(lambda: ps(run_dir).get("stage-2"), 90, "the stage on host B to register")
        assert remote["endpoint"].startswith(f"tcp://{HOST_B}:")
        wait_for(lambda: (run_dir / "logs" / "stage-2.jsonl").exists()
                 and '"handled"' in (run_dir / "logs" / "stage-2.jsonl").read_text(), 60, "host B's stage to get work")
        attach.send_signal(signal.SIGINT)
        attach.communicate(timeout=60)
        assert attach.returncode == 0
    finally:
        if attach.poll() is None:
            attach.kill()
        troupe("stop", str(run_dir))
    by_stage = [json.loads(line)["stage"] for line in (run_dir / "pipeline" / "sink-0.jsonl").read_text().splitlines()]
    assert "stage-2" in by_stage, "host B's results reached host A's sink"
    assert max(stored_indices(run_dir).values()) == 1


UNAUTHENTICATED_PING = """
import sys, time, zmq
sys.path.insert(0, %r)
from protocols.control import Ping
from protocols.envelope import Envelope, encode_envelope, new_id
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(sys.argv[1])
frames, _ = encode_envelope(Envelope(kind=Ping.KIND, message_id=new_id(), sender="intruder", sent_at=time.time(),
                                     payload={}, expects_reply=True))
sock.send_multipart(frames)
print("answered" if sock.poll(2000) else "no answer")
""" % str(Path(__file__).resolve().parents[2])

