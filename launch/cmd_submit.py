"""`troupe submit TOPOLOGY --nodes N [--run-dir DIR] [--set k=v ...] [SBATCH OPTIONS]`: run on Slurm.

Writes the sbatch script that runs ``troupe launch TOPOLOGY --slurm`` into the run
directory (``slurm/submit.sbatch``, kept there to read, edit and submit again),
submits it, and prints the job id and the run directory (`launch.slurm_launch`).
Every option troupe does not know is sbatch's, written as an ``#SBATCH`` line
(``--time=2:00:00 --partition=gpu``; write each with ``=``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PASSES_UNKNOWN_OPTIONS = True
"""Options troupe does not know are sbatch's (launch.cli)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topology", help="the topology YAML file")
    parser.add_argument("--nodes", type=int, required=True, metavar="N", help="nodes to allocate")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run directory, on a file system every node shares (default: runs/<name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, e.g. --set roles.generator.count=4 (repeatable)")
    parser.set_defaults(passed_options=[])
    parser.epilog = "Any other option (--time=2:00:00, --partition=gpu, ...) is passed to sbatch."


def run(args: argparse.Namespace) -> int:
    from launch.slurm import SlurmError
    from launch.slurm_launch import submit_run
    from launch.topology import TopologyError

    if args.nodes < 1:
        print("troupe submit: --nodes must be at least 1", file=sys.stderr)
        return 2
    options = [option for option in args.passed_options if option != "--"]
    if any(not option.startswith("-") for option in options):
        print(f"troupe submit: write sbatch options as --name=value: {' '.join(options)}", file=sys.stderr)
        return 2
    try:
        job_id, run_dir, script = submit_run(args.topology, args.overrides, args.nodes, args.run_dir, options)
    except TopologyError as error:
        print(error, file=sys.stderr)
        return 2
    except SlurmError as error:
        print(f"troupe submit: {error}", file=sys.stderr)
        return 1
    print(f"submitted job {job_id}: run in {run_dir}")
    print(f"  batch script {script}\n  troupe ps {run_dir}\n  troupe logs {run_dir} --follow\n  troupe stop {run_dir}")
    return 0
