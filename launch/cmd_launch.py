"""`troupe launch TOPOLOGY [--run-dir DIR] [--set k=v ...] [--detach | --slurm]`: start a run.

A thin shell over the Python API (launch.run.Run): `Run.launch` in the foreground,
`Run.start` with ``--detach``. With ``--slurm`` (inside ``salloc`` or an sbatch script,
as `troupe submit` writes) every instance is a job step on the node its placement names
(`launch.slurm_launch`).
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
    parser.add_argument("--slurm", action="store_true",
                        help="inside a Slurm allocation: start every instance as a job step on its node")
    parser.add_argument("--no-status", action="store_true", help="print events as lines instead of a live table")


def run(args: argparse.Namespace) -> int:
    from launch.run import Run, RunBusyError, RunError

    if args.slurm:
        return _launch_slurm(args)
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


def _launch_slurm(args: argparse.Namespace) -> int:
    from launch.slurm import SlurmError
    from launch.slurm_launch import launch_in_allocation
    from launch.topology import TopologyError

    if args.detach:
        print("troupe launch: --slurm runs in the foreground of its allocation; use `troupe submit` to run in the background",
              file=sys.stderr)
        return 2
    try:
        return launch_in_allocation(args.topology, args.overrides, args.run_dir, False if args.no_status else None)
    except TopologyError as error:  # every problem, placement on this allocation's nodes included
        print(error, file=sys.stderr)
        return 2
    except SlurmError as error:
        print(f"troupe launch --slurm: {error}", file=sys.stderr)
        return 1
