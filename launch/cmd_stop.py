"""`troupe stop RUN_DIR [INSTANCE]`: stop one instance (its work goes elsewhere) or the whole run.

The launcher's supervisor does the stopping. When the launcher itself is gone (killed
with SIGKILL, so it recorded no end), the command stops the role processes it left on
this host by itself and records the run as failed.
"""

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
    from launch.rundir import RunDirError, launcher_alive, launcher_gone, read_run_info
    from protocols.supervision import StopInstance, StopRun
    from runtime.errors import RemoteError

    try:
        if launcher_gone(read_run_info(args.run_dir)):
            return stop_left_behind(args.run_dir, args.instance, args.timeout)
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
            if launcher_gone(read_run_info(args.run_dir)):  # it died while stopping the roles
                return stop_left_behind(args.run_dir, None, max(1.0, deadline - time.monotonic()))
            print(f"run {info.run} {read_run_info(args.run_dir).state}")
            return 0
        time.sleep(0.2)
    print(f"troupe stop: run {info.run} still running after {args.timeout:g} s (launcher pid {info.launcher_pid})",
          file=sys.stderr)
    return 1


def stop_left_behind(run_dir: Path, instance: str | None, timeout: float) -> int:
    """The launcher died without stopping its roles: stop the role processes it left on
    this host (SIGTERM, then SIGKILL after the topology's stop_timeout_s), and record
    the run as failed, so the run directory no longer claims a run is going on."""
    import psutil

    from launch.rundir import read_run_info, read_topology, role_processes, write_run_info

    info = read_run_info(run_dir)
    left = role_processes(run_dir)
    if instance is not None:
        if instance not in left:
            print(f"troupe stop: {instance} is not running on this host, and the launcher of run {info.run} "
                  f"(pid {info.launcher_pid}) is gone; running here: {', '.join(sorted(left)) or 'none'}", file=sys.stderr)
            return 1
        left = {instance: left[instance]}
    print(f"run {info.run}: its launcher (pid {info.launcher_pid}) is gone without recording an end (killed?)", flush=True)
    grace = min(timeout, float(read_topology(run_dir).get("stop_timeout_s", 30.0)))
    for process in left.values():
        try:
            process.terminate()
        except psutil.NoSuchProcess:  # it stopped by itself meanwhile
            pass
    _, stubborn = psutil.wait_procs(list(left.values()), timeout=grace)
    for process in stubborn:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(stubborn, timeout=5)
    for name, process in sorted(left.items()):
        how = f"killed (it ignored SIGTERM for {grace:g} s)" if process in stubborn else "stopped"
        print(f"  {name} (pid {process.pid}) {how}")
    if instance is not None:
        return 0
    write_run_info(run_dir, info.model_copy(update={"state": "failed"}))
    done = "every role process it left is stopped" if left else "no role process of it is left on this host"
    print(f"{done}; recorded run {info.run} as failed")
    return 0
