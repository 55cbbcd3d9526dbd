"""The run directory and `registry.json`, which `troupe ps/stop/attach/logs` read.

    runs/<run>/
      topology.yaml      the resolved topology (every default filled in)
      registry.json      where the registry and supervisor listen, the launcher's pid
      keys/              CURVE keys, when the topology enables them
      logs/<instance>.jsonl     structured message log of each actor
      logs/<instance>.stderr    what each instance's process printed
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from pydantic import BaseModel, ConfigDict

REGISTRY_FILE = "registry.json"
TOPOLOGY_FILE = "topology.yaml"


class RunInfo(BaseModel):
    """What `registry.json` holds."""

    model_config = ConfigDict(extra="forbid")

    run: str
    registry: str
    """The registry's endpoint."""
    supervisor: str
    """The supervisor's endpoint (in the launcher process)."""
    launcher_pid: int
    host: str
    started_at: float
    curve_keys_dir: str | None = None
    secret_file: str | None = None
    """The run's shared secret, which every connection to it presents (runtime.security)."""
    state: str = "running"
    """``starting`` while the roles come up, ``running``, then ``finished`` or ``failed``."""


class RunDirError(RuntimeError):
    """A run directory that is missing, incomplete, or whose run is not running."""


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    """Write registry.json atomically (readers never see half a file)."""
    temporary = run_dir / f".{REGISTRY_FILE}.{os.getpid()}"
    temporary.write_text(info.model_dump_json(indent=2))
    temporary.replace(run_dir / REGISTRY_FILE)


def read_run_info(run_dir: Path | str) -> RunInfo:
    path = Path(run_dir) / REGISTRY_FILE
    if not Path(run_dir).is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give the run directory `troupe launch` printed")
    try:
        return RunInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist: this is not a run directory, or the run never started") from None
    except ValueError as error:
        raise RunDirError(f"{path} is not readable: {error}") from None


def launcher_alive(info: RunInfo) -> bool:
    """Whether the launcher process of a run on this host is still running."""
    if info.host != socket.gethostname():
        return True  # another host's process: only asking it can tell
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
    path = Path(run_dir) / TOPOLOGY_FILE
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist: this is not a run directory") from None


def write_topology(run_dir: Path, resolved: dict[str, Any]) -> None:
    (run_dir / TOPOLOGY_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
