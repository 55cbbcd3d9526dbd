"""Helpers for driving the real `troupe` command in end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import yaml

TROUPE = str(Path(sys.executable).parent / "troupe")


def troupe(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TROUPE, *args], capture_output=True, text=True, timeout=timeout)


def write_topology(tmp_path: Path, items: int, interval_s: float = 0.0, stage_restart: dict | None = None,
                   extra_roles: dict | None = None) -> Path:
    topology = {
        "name": "e2e",
        "runtime": {"heartbeat_interval_s": 0.3, "heartbeat_timeout_s": 2.0},
        "stop_timeout_s": 10,
        "roles": {
            "producer": {"entry": "pipeline-producer", "ends_run": True,
                         "config": {"items": items, "rows": 4, "width": 16, "in_flight": 4, "interval_s": interval_s}},
            "stage": {"entry": "pipeline-stage", "count": 2, "config": {"work_s": 0.01},
                      "restart": stage_restart or {"policy": "on-failure", "max_restarts": 3, "backoff_s": 0.2}},
            "sink": {"entry": "pipeline-sink"},
            **(extra_roles or {}),
        },
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def run_processes(run_dir: Path) -> list[psutil.Process]:
    """Live processes that belong to the run (their command line names its directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and str(run_dir) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ps(run_dir: Path) -> dict[str, dict]:
    result = troupe("ps", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def run_state(run_dir: Path) -> str:
    return json.loads((run_dir / "registry.json").read_text())["state"]


def stored_indices(run_dir: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    for path in (run_dir / "pipeline").glob("*.jsonl"):
        counts.update(json.loads(line)["index"] for line in path.read_text().splitlines())
    return counts
