"""Whether a run directory's run is live, and what `troupe ps/stop` say when it is not."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from launch.cli import main
from launch.rundir import RunInfo, write_run_info, write_topology


def write_run(run_dir, state: str) -> int:
    """A run directory whose launcher was a real process that has exited; returns its pid."""
    launcher = subprocess.Popen([sys.executable, "-c", "pass"])
    launcher.wait()  # exited and reaped: nothing runs under its pid
    run_dir.mkdir()
    write_topology(run_dir, {"name": "lost", "stop_timeout_s": 5.0, "roles": {}})
    write_run_info(run_dir, RunInfo(run="lost", registry="tcp://127.0.0.1:1", supervisor="tcp://127.0.0.1:2",
                                    launcher_pid=launcher.pid, host=socket.gethostname(), started_at=time.time(), state=state))
    return launcher.pid


def test_ps_on_a_run_whose_launcher_died_says_the_launcher_is_gone(tmp_path, capsys):
    pid = write_run(tmp_path / "run", "running")
    assert main(["ps", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"run lost in {tmp_path / 'run'} is not running: its launcher (pid {pid}) is gone without recording an end (killed?)" in err
    assert "none of its role processes is left on this host" in err


def test_stop_on_a_run_whose_launcher_died_records_it_as_failed(tmp_path, capsys):
    write_run(tmp_path / "run", "starting")
    assert main(["stop", str(tmp_path / "run")]) == 0
    assert "no role process of it is left on this host; recorded run lost as failed" in capsys.readouterr().out
    assert main(["ps", str(tmp_path / "run")]) == 1
    assert f"run lost in {tmp_path / 'run'} is not running: it failed" in capsys.readouterr().err


def test_ps_on_a_finished_run_says_it_finished(tmp_path, capsys):
    write_run(tmp_path / "run", "finished")
    assert main(["ps", str(tmp_path / "run")]) == 1
    assert "is not running: it finished" in capsys.readouterr().err
