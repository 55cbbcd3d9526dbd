"""`troupe ps RUN_DIR [--json]`: every live actor of a run."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


async def gather(run_dir: Path) -> list[dict[str, Any]]:
    """One row per actor: what the supervisor knows, joined with what the registry knows."""
    from launch.client import client_for, live_run
    from protocols.membership import Lookup
    from protocols.supervision import StatusQuery

    info = live_run(run_dir)
    async with client_for(info, "troupe-ps") as client:
        status = await client.ask(info.supervisor, StatusQuery(), timeout=10)
        records = {record.name: record for record in (await client.ask(info.registry, Lookup(), timeout=10)).records}
    rows = []
    for instance in status.instances:
        record = records.pop(instance.name, None)
        rows.append(_row(instance.name, instance.role, instance.pid, record, instance.state, instance.restarts,
                         instance.started_at, instance.attached))
    for record in records.values():  # actors the supervisor does not run: itself, attached elsewhere
        rows.append(_row(record.name, record.role, record.pid, record, record.state, None, record.registered_at, None))
    return rows


def _row(name: str, role: str, pid: int | None, record: Any, state: str, restarts: int | None,
         started_at: float, attached: bool | None) -> dict[str, Any]:
    live_state = record.state if record is not None and state == "running" else state
    return {
        "name": name, "role": role, "pid": pid, "host": record.host if record is not None else None,
        "state": live_state, "uptime_s": round(time.time() - started_at, 1) if started_at else None,
        "messages_in": record.messages_in if record is not None else None,
        "messages_out": record.messages_out if record is not None else None,
        "weights_version": record.weights_version if record is not None else None,
        "restarts": restarts, "attached": attached, "endpoint": record.endpoint if record is not None else None,
    }


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from launch.rundir import RunDirError
    from launch.status import uptime

    try:
        rows = asyncio.run(gather(args.run_dir))
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
