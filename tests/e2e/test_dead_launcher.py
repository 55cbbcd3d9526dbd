"""A launcher killed with SIGKILL: `troupe ps` says so plainly, `troupe stop` ends what it left behind."""

from __future__ import annotations

import json
import os
import signal

import psutil
import yaml

from tests.e2e.cli import run_processes, run_state, troupe, wait_for, write_topology


def test_a_killed_launcher_is_reported_plainly_and_stop_ends_the_role_processes_it_left(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=20000, interval_s=0.02,
                              extra_roles={"stubborn": {"entry": "tests.e2e.outliving_actor:IgnoresSigterm"}})
    raw = yaml.safe_load(topology.read_text())
    raw["stop_timeout_s"] = 2  # how long `troupe stop` waits after SIGTERM before SIGKILL
    topology.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach")
    assert started.returncode == 0, started.stderr
    launcher = json.loads((run_dir / "registry.json").read_text())["launcher_pid"]

    os.kill(launcher, signal.SIGKILL)

    def only_one_left() -> list[psutil.Process] | None:
        left = run_processes(run_dir)
        return left if len(left) == 1 else None

    # Role processes get SIGTERM when their launcher dies and stop; only the one that ignores it is left.
    survivors = wait_for(only_one_left, 30, "every role but the stubborn one to stop with its launcher")
    assert "stubborn-0" in survivors[0].cmdline()
    assert run_state(run_dir) == "running", "nobody recorded an end"

    listed = troupe("ps", str(run_dir))
    assert listed.returncode == 1
    assert f"its launcher (pid {launcher}) is gone without recording an end (killed?)" in listed.stderr, listed.stderr
    assert f"stubborn-0 (pid {survivors[0].pid})" in listed.stderr
    assert f"troupe stop {run_dir}" in listed.stderr

    stopped = troupe("stop", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert f"stubborn-0 (pid {survivors[0].pid}) killed" in stopped.stdout, stopped.stdout
    assert not survivors[0].is_running() or survivors[0].status() == psutil.STATUS_ZOMBIE
    assert run_state(run_dir) == "failed"
    after = troupe("ps", str(run_dir))
    assert after.returncode == 1 and "is not running: it failed" in after.stderr, after.stderr
