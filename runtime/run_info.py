"""`registry.json`: where a run's registry and supervisor listen, written by the
launcher and read by every process that joins or inspects the run (the trainer
names its rendezvous store after the launch; the command line finds the run).
A runtime idea, like the logs beside it; `launch.rundir` holds the rest of the run
directory's layout."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

REGISTRY_FILE = "registry.json"


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
