"""`troupe ps RUN_DIR [--json]`: every live actor of a run (`Run.status`), with the host
(on a cluster, the node) each one registered from."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

COLUMNS = ("name", "role", "state", "pid", "host", "uptime", "msgs in", "msgs out", "weights", "restarts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from launch.rundir import RunDirError
    from launch.run import Run

    try:
        rows = Run.attach(args.run_dir).status()
    except RunDirError as error:
        print(f"troupe ps: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    Console(width=None if sys.stdout.isatty() else 160).print(ps_table(rows))
    return 0


def ps_table(rows: list[dict[str, Any]]) -> Table:
    """`Run.status` rows as the ``troupe ps`` table, by role then name; "-" where a value is
    unknown (an instance that has not registered yet has no host)."""
    from rich.table import Table

    from launch.status import uptime

    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    table = Table()
    for column in COLUMNS:
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r["role"], r["name"])):
        table.add_row(
            row["name"], row["role"], row["state"], cell(row["pid"] or None), cell(row["host"]),
            uptime(time.time() - row["uptime_s"]) if row["uptime_s"] is not None else "-",
            cell(row["messages_in"]), cell(row["messages_out"]), cell(row["weights_version"]), cell(row["restarts"]),
        )
    return table
