"""Start actors in their own OS processes and stop them again.

`spawn_actor` runs ``python -m runtime.host`` for one actor and returns once the
actor serves (its endpoint read from a ready pipe), or raises `SpawnError` with
the exit code when it does not come up in time.

Whoever reaps an actor process here (`ActorProcess.wait` and `stop`) also removes
the shared-memory segments it owned (runtime.shm): a process that exits in order
removes its own, one killed with SIGKILL cannot, and no one else would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runtime.settings import RuntimeSettings
from runtime.shm.segments import remove_segments_of
from runtime.transport import DEFAULT_ENDPOINT


class SpawnError(RuntimeError):
    """An actor process exited or stalled before it was ready."""


@dataclass
class ActorProcess:
    """A running actor process."""

    name: str
    endpoint: str
    process: asyncio.subprocess.Process
    _stderr: IO[bytes] | None = field(default=None, repr=False)
    run: str = ""
    """The run it belongs to (its shared-memory segments carry the name)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, for tests of failure)."""
        if self.process.returncode is None:
            self.process.kill()

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; then remove the shared-memory segments it left."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        remove_segments_of(self.pid, self.run)
        return code

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful stop), then SIGKILL if it has not exited within `timeout`."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        remove_segments_of(self.pid, self.run)
        if self._stderr is not None:
            self._stderr.close()
        return self.process.returncode  # type: ignore[return-value]


async def spawn_actor(
    actor: str,
    name: str,
    *,
    role: str | None = None,
    instance: int = 0,
    bind: str = DEFAULT_ENDPOINT,
    registry: str | None = None,
    run: str = "",
    run_dir: Path | str | None = None,
    options: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    settings: RuntimeSettings | None = None,
    env: dict[str, str] | None = None,
    stderr_path: Path | str | None = None,
    ready_timeout: float = 60.0,
) -> ActorProcess:
    """Start `actor` (``package.module:ActorClass``) as `name` in a new process.

    Args:
        options: keyword arguments for the actor class's constructor.
        config: the role's config block, validated by the actor class's `Config`.
        stderr_path: file for the process's stdout and stderr (None: inherit this process's).
        ready_timeout: seconds to wait for the actor to serve.

    Raises:
        SpawnError: the process exited, or was not ready within `ready_timeout`
            (it is killed then).
    """
    read_fd, write_fd = os.pipe()
    command = [sys.executable, *host_arguments(
        actor, name, role=role, instance=instance, bind=bind, registry=registry, run=run, run_dir=run_dir,
        options=options, config=config, settings=settings,
    ), "--ready-fd", str(write_fd)]
    stderr = open(stderr_path, "ab") if stderr_path is not None else None  # noqa: SIM115 - closed in stop()
    try:
        process = await asyncio.create_subprocess_exec(
            *command, pass_fds=(write_fd,), env={**os.environ, **(env or {})}, stdout=stderr, stderr=stderr,
        )
    except BaseException:
        os.close(read_fd)
        if stderr is not None:
            stderr.close()
        raise
    finally:
        os.close(write_fd)
    try:
        line = await _read_ready_line(read_fd, process, ready_timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        remove_segments_of(process.pid, run)
        if stderr is not None:
            stderr.close()
        raise
    ready = json.loads(line)
    return ActorProcess(name=name, endpoint=ready["endpoint"], process=process, _stderr=stderr, run=run)


def host_arguments(
    actor: str,
    name: str,
    *,
    role: str | None = None,
    instance: int = 0,
    bind: str = DEFAULT_ENDPOINT,
    registry: str | None = None,
    run: str = "",
    run_dir: Path | str | None = None,
    options: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    settings: RuntimeSettings | None = None,
) -> list[str]:
    """The arguments after the Python interpreter that run one actor (``-m runtime.host ...``),
    without a way to say it is ready: a caller adds ``--ready-fd`` or ``--ready-file``."""
    arguments = [
        "-m", "runtime.host", "--actor", actor, "--name", name, "--instance", str(instance),
        "--bind", bind, "--run", run, "--options", json.dumps(options or {}),
        "--settings", (settings or RuntimeSettings()).model_dump_json(),
    ]
    if role is not None:
        arguments += ["--role", role]
    if registry is not None:
        arguments += ["--registry", registry]
    if run_dir is not None:
        arguments += ["--run-dir", str(run_dir)]
    if config is not None:
        arguments += ["--config", json.dumps(config)]
    return arguments


async def _read_ready_line(read_fd: int, process: asyncio.subprocess.Process, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except asyncio.TimeoutError:
        raise SpawnError(f"actor process {process.pid} was not ready within {timeout:g} s") from None
    finally:
        transport.close()
    if not line:
        code = await process.wait()
        raise SpawnError(f"actor process {process.pid} exited with code {code} before it was ready")
    return line.decode()
