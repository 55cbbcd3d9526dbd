"""Talking to a live run from a command: its run directory tells where, and with which keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.rundir import RunDirError, RunInfo, launcher_gone, read_run_info, role_processes
from runtime.client import Client
from runtime.errors import ActorError
from runtime.settings import RuntimeSettings


def live_run(run_dir: Path | str) -> RunInfo:
    """The run's info, if its launcher is alive; RunDirError (with what to do) otherwise."""
    info = read_run_info(run_dir)
    if info.state in ("finished", "failed"):
        raise RunDirError(f"run {info.run} in {run_dir} is not running: it {info.state} (launcher pid {info.launcher_pid})")
    if launcher_gone(info):
        left = role_processes(run_dir)
        listed = ", ".join(f"{name} (pid {process.pid})" for name, process in sorted(left.items()))
        what_is_left = (f"{len(left)} of its role processes {'is' if len(left) == 1 else 'are'} still running on this host: "
                        f"{listed}; `troupe stop {run_dir}` stops them and records the run as failed" if left else
                        f"none of its role processes is left on this host; `troupe stop {run_dir}` records the run as failed")
        raise RunDirError(f"run {info.run} in {run_dir} is not running: its launcher (pid {info.launcher_pid}) is gone "
                          f"without recording an end (killed?); {what_is_left}")
    return info


def client_for(info: RunInfo, name: str, run_dir: Path | str | None = None) -> Client:
    """A client of the run, holding its credentials (its message log in `run_dir`, if given)."""
    settings = RuntimeSettings(curve_keys_dir=info.curve_keys_dir, secret_file=info.secret_file, log_messages=run_dir is not None)
    return Client(name, registry=info.registry, settings=settings, run=info.run, run_dir=run_dir)


async def ask_supervisor(info: RunInfo, message: Any, timeout: float = 10.0) -> Any:
    async with client_for(info, "troupe-cli") as client:
        try:
            return await client.ask(info.supervisor, message, timeout=timeout)
        except ActorError as error:
            raise RunDirError(f"the supervisor of run {info.run} did not answer: {error}") from error
