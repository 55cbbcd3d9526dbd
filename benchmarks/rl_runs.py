"""Shared by the RL benchmarks: run the arithmetic example through `troupe launch` and
read back what it wrote."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "arith" / "data"


def ensure_data() -> Path:
    """The example's model and data (built once, as `make demo` does)."""
    if not (DATA / "build.json").exists():
        sys.path.insert(0, str(REPO))
        from examples.arith.build import build

        build(DATA)
    return DATA


def launch(run_dir: Path, overrides: list[str], topology: str = "examples/arith-grpo.yaml") -> float:
    """Run the topology to its end; returns the wall seconds of the whole launch."""
    command = [str(Path(sys.executable).parent / "troupe"), "launch", topology, "--run-dir", str(run_dir), "--no-status"]
    for override in overrides:
        command += ["--set", override]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log_events(run_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted((run_dir / "logs").glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    return events


def machine() -> str:
    return f"{platform.node()}  {os.cpu_count()} cpus  Python {platform.python_version()}"
