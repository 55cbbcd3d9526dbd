"""`troupe stop RUN_DIR [INSTANCE]`: stop one instance (its work goes elsewhere) or the whole run."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("instance", nargs="?", help="one instance (e.g. stage-1); without it the whole run stops")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the run to end")


def run(args: argparse.Namespace) -> int:
    from launch.client import ask_supervisor, live_run
    from launch.rundir import RunDirError, launcher_alive, read_run_info
    from protocols.supervision import StopInstance, StopRun
    from runtime.errors import RemoteError

    try:
        info = live_run(args.run_dir)
        if args.instance is not None:
            status = asyncio.run(ask_supervisor(info, StopInstance(args.instance), timeout=args.timeout))
            print(f"{status.name} {status.state} (exit code {status.exit_code})")
            return 0
        asyncio.run(ask_supervisor(info, StopRun("troupe stop")))
    except RemoteError as error:
        print(f"troupe stop: {error.remote_message}", file=sys.stderr)
        return 1
    except RunDirError as error:
        print(f"troupe stop: {error}", file=sys.stderr)
        return 1
    print(f"stopping run {info.run}...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not launcher_alive(info):
            print(f"run {info.run} {read_run_info(args.run_dir).state}")
            return 0
        time.sleep(0.2)
    print(f"troupe stop: run {info.run} still running after {args.timeout:g} s (launcher pid {info.launcher_pid})",
          file=sys.stderr)
    return 1
