"""`troupe launch TOPOLOGY [--run-dir DIR] [--set k=v ...] [--detach]`: start a run."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topology", help="the topology YAML file")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, e.g. --set roles.stage.count=3 (repeatable)")
    parser.add_argument("--detach", action="store_true", help="run in the background; return once every role is up")
    parser.add_argument("--no-status", action="store_true", help="print events as lines instead of a live table")


def run(args: argparse.Namespace) -> int:
    from launch.launcher import launch_run, prepare_run_dir
    from launch.rundir import RunDirError, default_run_dir, launcher_alive, read_run_info
    from launch.status import StatusView
    from launch.topology import TopologyError, load_topology
    from runtime.host import run_event_loop

    try:
        topology, configs = load_topology(args.topology, args.overrides)
    except TopologyError as error:
        print(error, file=sys.stderr)
        return 2
    run_dir = args.run_dir or (Path(topology.run_dir) if topology.run_dir else default_run_dir(topology.name))
    try:
        info = read_run_info(run_dir)
    except RunDirError:
        pass
    else:
        if info.state in ("starting", "running") and launcher_alive(info):
            print(f"troupe launch: a run is live in {run_dir} (launcher pid {info.launcher_pid}); "
                  f"stop it first (troupe stop {run_dir}) or choose another --run-dir", file=sys.stderr)
            return 2
    topology = prepare_run_dir(topology, configs, run_dir)
    if args.detach:
        return _detach(run_dir, topology.startup_timeout_s)
    view = StatusView(live=False if args.no_status else None)
    return run_event_loop(lambda: launch_run(topology, configs, run_dir, view), topology.runtime)


def _detach(run_dir: Path, startup_timeout_s: float) -> int:
    """Start the launcher in its own session and wait until the run is up (or failed)."""
    from launch.rundir import RunDirError, read_run_info, tail

    log = run_dir / "launcher.log"
    with open(log, "ab") as output:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "launch.launcher", str(run_dir)], stdin=subprocess.DEVNULL,
            stdout=output, stderr=output, start_new_session=True,
        )
    deadline = time.monotonic() + startup_timeout_s + 30
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            print(f"troupe launch: the run failed to start (launcher exited {launcher.returncode}):\n{tail(log, 30)}",
                  file=sys.stderr)
            return 1
        try:
            info = read_run_info(run_dir)
        except RunDirError:
            info = None
        if info is not None and info.launcher_pid == launcher.pid and info.state == "running":
            print(f"run {info.run} is up in {run_dir} (launcher pid {launcher.pid}, registry {info.registry})")
            print(f"  troupe ps {run_dir}\n  troupe logs {run_dir} --follow\n  troupe stop {run_dir}")
            return 0
        time.sleep(0.2)
    print(f"troupe launch: the run did not come up in time; see {log}", file=sys.stderr)
    return 1
