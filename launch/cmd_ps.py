"""`troupe ps RUN_DIR [--json]`: every live actor of a run (`Run.status`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from launch.rundir import RunDirError
    from launch.run import Run
    from launch.status import uptime

    try:
        rows = Run.attach(args.run_dir).status()
    except RunDirError as error:
        print(f"troupe ps: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table()
    for column in ("name", "role", "state", "pid", "host", "uptime", "msgs in", "msgs out", "weights", "restarts"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r["role"], r["name"])):
        table.add_row(
            row["name"], row["role"], row["state"], str(row["pid"] or "-"), row["host"] or "-",
            uptime(time.time() - row["uptime_s"]) if row["uptime_s"] is not None else "-",
            str(row["messages_in"] if row["messages_in"] is not None else "-"),
            str(row["messages_out"] if row["messages_out"] is not None else "-"),
            str(row["weights_version"] if row["weights_version"] is not None else "-"),
            str(row["restarts"] if row["restarts"] is not None else "-"),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
