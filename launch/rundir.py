"""What the command line does with a run directory: find its live processes, read and
write its resolved topology, name a new one. Its layout (every path in it) is
`runtime.run_dir.RunDir`'s; `registry.json` is `runtime.run_info`'s."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

# registry.json itself is the runtime's (runtime.run_info); launch's modules import it from here
from runtime.run_dir import RunDir
from runtime.run_info import REGISTRY_FILE, RunDirError, RunInfo, read_run_info, write_run_info  # noqa: F401

def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def launcher_alive(info: RunInfo) -> bool:
    """Whether the launcher process of a run on this host is still running."""
    if info.host != socket.gethostname():
        # another host's process (a Slurm batch host): it records its end in the shared
        # registry.json as it exits; a launcher killed there leaves its job to Slurm, which ends it
        return info.state in ("starting", "running")
    try:
        process = psutil.Process(info.launcher_pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def launcher_gone(info: RunInfo) -> bool:
    """Whether the run's launcher died without recording an end (killed, or its host rebooted)."""
    return info.state in ("starting", "running") and not launcher_alive(info)


def role_processes(run_dir: Path | str) -> dict[str, psutil.Process]:
    """The run's role processes alive on this host, by instance name.

    They are found by command line (``python -m runtime.host --name NAME ... --run-dir
    DIR``, as `runtime.spawn` starts them), so this needs no launcher to ask: it is
    how `troupe stop` finds what a killed launcher left behind.
    """
    directory = Path(run_dir).resolve()
    found = {}
    for process in psutil.process_iter(["cmdline", "cwd"]):
        argv = process.info["cmdline"] or []
        if "runtime.host" not in argv or "--run-dir" not in argv or "--name" not in argv:
            continue
        try:
            named = Path(process.info["cwd"] or "/") / argv[argv.index("--run-dir") + 1]
            if named.resolve() == directory and process.status() != psutil.STATUS_ZOMBIE:
                found[argv[argv.index("--name") + 1]] = process
        except (IndexError, psutil.NoSuchProcess):  # a command line cut short, or a process gone meanwhile
            continue
    return found


def read_topology(run_dir: Path | str) -> dict[str, Any]:
    """The resolved topology a run was launched with."""
    return RunDir(run_dir).read_topology()


def write_topology(run_dir: Path, resolved: dict[str, Any]) -> None:
    RunDir(run_dir).topology.write_text(yaml.safe_dump(resolved, sort_keys=False))


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
