"""End-to-end fixtures: a run directory that must leave no process behind."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.e2e.cli import run_processes


@pytest.fixture
def run_dir(tmp_path: Path):
    directory = tmp_path / "run"
    yield directory
    # A launcher that just wrote "finished" may still be exiting: give processes a moment.
    _, leftovers = psutil.wait_procs(run_processes(directory), timeout=10)
    leftovers = [p for p in leftovers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in leftovers:
        process.kill()
    assert not leftovers, f"processes outlived the run: {[p.info['cmdline'][-4:] for p in leftovers]}"
