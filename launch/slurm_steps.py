"""Role instances as Slurm job steps: the supervisor's spawn strategy on a cluster.

`SlurmSpawner` has `runtime.spawn.spawn_actor`'s signature, so the supervisor starts,
watches, restarts and stops instances through the same code either way. For one
instance it runs, on the batch host::

    srun --overlap --nodes=1 --ntasks=1 --nodelist=NODE --job-name=troupe.RUN.INSTANCE \
         python -m runtime.host ... --bind tcp://NODE_ADDRESS:* --ready-file RUN_DIR/slurm/ready/INSTANCE.json

``--overlap`` lets every step share the job's CPUs (a run's roles are many processes on
few nodes); the step's output comes back through srun into the instance's log in the
run directory. The instance writes its ready line to the shared run directory (no pipe
crosses nodes), and `SlurmStep` is the process handle the supervisor keeps: the srun
client's exit is the instance's exit (a task killed on its node is a dead role), a
graceful stop is SIGTERM to the step's task (``scancel --signal=TERM``), and the last
resort is ``scancel`` of the step.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from launch.slurm import Allocation
from runtime.run_dir import RunDir
from runtime.settings import RuntimeSettings
from runtime.spawn import SpawnError, host_arguments

READY_POLL_S = 0.1
SCANCEL_TIMEOUT_S = 15.0
STEP_LOOKUP_S = 10.0


@dataclass
class SlurmStep:
    """An instance running as a job step; the supervisor's handle on it."""

    name: str
    endpoint: str
    node: str
    pid: int
    """The instance's process id on its node (what the registry records)."""
    srun: asyncio.subprocess.Process
    step_name: str
    job_id: str
    step_id: str | None = None
    """``JOB.STEP`` once known (``squeue --steps``)."""
    _output: IO[bytes] | None = field(default=None, repr=False)

    @property
    def returncode(self) -> int | None:
        return self.srun.returncode

    def kill(self) -> None:
        """SIGKILL the instance on its node (the step ends, srun exits with an error)."""
        if self.srun.returncode is not None:
            return
        if self.step_id is not None:
            _scancel("--signal=KILL", self.step_id)
        else:
            self.srun.kill()  # srun killed: Slurm ends the step it started

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the step to end (srun's exit code is the instance's)."""
        code = await asyncio.wait_for(self.srun.wait(), timeout)
        if self._output is not None:
            self._output.close()  # srun has its own copy; a restart opens the log again
        return code

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM to the instance (a graceful stop), then ``scancel`` of the step, then
        SIGKILL of srun if the step still has not ended."""
        if self.srun.returncode is None:
            if self.step_id is not None:
                await asyncio.to_thread(_scancel, "--signal=TERM", self.step_id)
            else:
                self.srun.terminate()  # srun ends its step on SIGTERM (no grace for the task)
            try:
                await asyncio.wait_for(self.srun.wait(), timeout)
            except asyncio.TimeoutError:
                if self.step_id is not None:
                    await asyncio.to_thread(_scancel, self.step_id)
                try:
                    await asyncio.wait_for(self.srun.wait(), SCANCEL_TIMEOUT_S)
                except asyncio.TimeoutError:
                    self.srun.kill()
                    await self.srun.wait()
        if self._output is not None:
            self._output.close()
        return self.srun.returncode  # type: ignore[return-value]


def _scancel(*arguments: str) -> None:
    """``scancel ARGUMENTS``. Its exit code is not looked at: Slurm 22.05 signals a step and
    still exits 225 ("Invalid job id"); whether the step ended is srun's exit, which the
    caller waits for, and escalates after."""
    try:
        subprocess.run(["scancel", *arguments], capture_output=True, timeout=SCANCEL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):  # no answer: the caller's deadline escalates to killing srun
        pass


class SlurmSpawner:
    """Starts instances as job steps of `allocation`, on the node `node_for` names.

    Args:
        allocation: the job the steps start in.
        node_for: ``(role, instance index) -> node name``.
        gpus_for: ``role -> GPUs per instance`` (0: none asked for).
    """

    def __init__(self, allocation: Allocation, run_dir: Path, node_for: Callable[[str, int], str],
                 gpus_for: Callable[[str], int]) -> None:
        self.allocation = allocation
        self.run_dir = RunDir(run_dir)
        self.node_for = node_for
        self.gpus_for = gpus_for

    async def __call__(
        self,
        actor: str,
        name: str,
        *,
        role: str | None = None,
        instance: int = 0,
        bind: str = "",
        registry: str | None = None,
        run: str = "",
        run_dir: Path | str | None = None,
        options: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        settings: RuntimeSettings | None = None,
        env: dict[str, str] | None = None,
        stderr_path: Path | str | None = None,
        ready_timeout: float = 60.0,
    ) -> SlurmStep:
        """Start `actor` as `name` in a job step (`runtime.spawn.spawn_actor`'s arguments;
        `bind` is replaced by the node's address). Raises SpawnError when it does not come up."""
        node = self.node_for(role or name, instance)
        ready_file = self.run_dir.ready_file(name)
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        step_name = f"troupe.{run}.{name}"
        environment = {**os.environ, **(env or {})}
        gpus = self.gpus_for(role or name)
        if gpus:
            environment.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm sets it for the GPUs it gives the step
        command = step_command(
            self.allocation, node, step_name, gpus, [sys.executable, *host_arguments(
                actor, name, role=role, instance=instance, bind=f"tcp://{self.allocation.address(node)}:*",
                registry=registry, run=run, run_dir=run_dir, options=options, config=config, settings=settings,
            ), "--ready-file", str(ready_file), "--no-parent-death"],
        )
        output = open(stderr_path, "ab") if stderr_path is not None else None  # noqa: SIM115 - closed in stop()
        try:
            srun = await asyncio.create_subprocess_exec(*command, env=environment, stdin=subprocess.DEVNULL,
                                                        stdout=output, stderr=output)
        except BaseException:
            if output is not None:
                output.close()
            raise
        try:
            ready = await _wait_ready(ready_file, srun, ready_timeout, f"{name} on {node}")
        except BaseException:
            if srun.returncode is None:
                srun.terminate()  # srun ends the step it started
                await srun.wait()
            if output is not None:
                output.close()
            raise
        step = SlurmStep(name, ready["endpoint"], node, ready["pid"], srun, step_name, self.allocation.job_id,
                         _output=output)
        step.step_id = await asyncio.to_thread(_find_step, self.allocation.job_id, step_name)
        if output is not None:  # the instance's log says where it runs (srun appends to the same file)
            output.write(f"--- {name} runs on {node} (pid {step.pid}, step {step.step_id or 'unknown'}) ---\n".encode())
            output.flush()
        return step


def step_command(allocation: Allocation, node: str, step_name: str, gpus: int, command: list[str]) -> list[str]:
    """The srun command line that runs `command` as one task of a new step on `node`,
    sharing the job's CPUs with the run's other steps (``--overlap``)."""
    return [
        "srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}", f"--job-name={step_name}",
        f"--jobid={allocation.job_id}", "--quiet", *([f"--gpus={gpus}"] if gpus else []), *command,
    ]


async def _wait_ready(ready_file: Path, srun: asyncio.subprocess.Process, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            return json.loads(ready_file.read_text())
        if srun.returncode is not None:
            raise SpawnError(f"the job step of {what} exited with code {srun.returncode} before it was ready")
        try:
            await asyncio.wait_for(srun.wait(), READY_POLL_S)
        except asyncio.TimeoutError:
            pass  # still starting: look for the ready file again
    raise SpawnError(f"{what} was not ready within {timeout:g} s")


def _find_step(job_id: str, step_name: str) -> str | None:
    """The ``JOB.STEP`` id of the running step named `step_name` (squeue may lag the start)."""
    deadline = time.monotonic() + STEP_LOOKUP_S
    while time.monotonic() < deadline:
        try:
            listing = subprocess.run(["squeue", "--steps", "--noheader", f"--jobs={job_id}", "--format=%i %j"],
                                     capture_output=True, text=True, timeout=SCANCEL_TIMEOUT_S).stdout
        except (OSError, subprocess.TimeoutExpired):  # no answer: the step is stopped through srun instead
            return None
        found = [line.split()[0] for line in listing.splitlines() if line.split()[1:] == [step_name]]
        if found:
            return found[-1]
        time.sleep(0.2)
    return None
