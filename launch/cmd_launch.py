"""`troupe launch TOPOLOGY [--run-dir DIR] [--set k=v ...] [--detach]`: start a run.

A thin shell over the Python API (launch.run.Run): `Run.launch` in the foreground,
`Run.start` with ``--detach``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topology", help="the topology YAML file")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, e.g. --set roles.stage.count=3 (repeatable)")
    parser.add_argument("--detach", action="store_true", help="run in the background; return once every role is up")
    parser.add_argument("--no-status", action="store_true", help="print events as lines instead of a live table")


def run(args: argparse.Namespace) -> int:
    from launch.run import Run, RunBusyError, RunError

    try:
        launched = Run.from_topology(args.topology, args.overrides, args.run_dir)
    except RunError as error:  # the topology is not runnable: every problem, one per line
        print(error, file=sys.stderr)
        return 2
    try:
        if not args.detach:
            return launched.launch(live=False if args.no_status else None)
        info = launched.start()
    except RunError as error:  # a live run in the directory (2), or the run did not come up (1)
        print(f"troupe launch: {error}", file=sys.stderr)
        return 2 if isinstance(error, RunBusyError) else 1
    run_dir = launched.run_dir
    print(f"run {info.run} is up in {run_dir} (launcher pid {info.launcher_pid}, registry {info.registry})")
    print(f"  troupe ps {run_dir}\n  troupe logs {run_dir} --follow\n  troupe stop {run_dir}")
    return 0
