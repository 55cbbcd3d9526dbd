"""End to end: the commands a user runs first."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_troupe_version_prints_the_installed_version():
    troupe = Path(sys.executable).parent / "troupe"  # the console script installed beside this python
    result = subprocess.run([str(troupe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"troupe {metadata.version('troupe-rl')}"


def test_the_runtime_showcase_moves_every_batch_exactly_once_despite_a_killed_stage(tmp_path):
    run_dir = tmp_path / "showcase"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "showcase.py"), "--run-dir", str(run_dir), "--batches", "24"],
        capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every id exactly once: True" in result.stdout
    assert "kill -9 stage-1" in result.stdout
    assert "stage-1 left (heartbeat-timeout)" in result.stdout
    logs = {path.stem for path in (run_dir / "logs").glob("*.jsonl")}
    assert logs == {"registry", "stage-0", "stage-1", "sink-0", "driver-0"}
    for path in (run_dir / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            assert json.loads(line)["run"] == "showcase"
