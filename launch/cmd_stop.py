"""`troupe stop RUN_DIR [INSTANCE]`: stop one instance (its work goes elsewhere) or the whole run.

A thin shell over the Python API (`Run.stop`, `Run.stop_instance`): the launcher's
supervisor does the stopping. When the launcher itself is gone (killed with SIGKILL,
so it recorded no end), the role processes it left on this host are stopped from here
and the run is recorded as failed (`Run.stop_left_behind`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("instance", nargs="?", help="one instance (e.g. stage-1); without it the whole run stops")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the run to end")


def run(args: argparse.Namespace) -> int:
    from launch.rundir import RunDirError
    from launch.run import Run, RunError
    from runtime.errors import RemoteError

    try:
        stopping = Run.attach(args.run_dir)
        if stopping.launcher_gone():
            print_left_behind(stopping.stop_left_behind(args.instance, args.timeout))
            return 0
        info = stopping.live_info()
        if args.instance is not None:
            status = stopping.stop_instance(args.instance, timeout=args.timeout)
            print(f"{status.name} {status.state} (exit code {status.exit_code})")
            return 0
        print(f"stopping run {info.run}...", flush=True)
        outcome = stopping.stop(args.timeout, reason="troupe stop")
    except RemoteError as error:
        print(f"troupe stop: {error.remote_message}", file=sys.stderr)
        return 1
    except (RunDirError, RunError) as error:
        print(f"troupe stop: {error}", file=sys.stderr)
        return 1
    if outcome.left_behind is not None:  # the launcher died while stopping the roles
        print_left_behind(outcome.left_behind)
    else:
        print(f"run {info.run} {outcome.state}")
    return 0


def print_left_behind(report: Any) -> None:
    """What `Run.stop_left_behind` did (a launch.client.LeftBehind), one line per process."""
    print(f"run {report.run}: its launcher (pid {report.launcher_pid}) is gone without recording an end (killed?)")
    for name, pid, killed in report.stopped:
        how = f"killed (it ignored SIGTERM for {report.grace_s:g} s)" if killed else "stopped"
        print(f"  {name} (pid {pid}) {how}")
    if report.recorded_failed:
        done = "every role process it left is stopped" if report.stopped else "no role process of it is left on this host"
        print(f"{done}; recorded run {report.run} as failed")
