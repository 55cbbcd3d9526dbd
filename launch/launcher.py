"""The launcher: one process that hosts the registry and the supervisor and runs a topology.

`launch_run` writes the run directory (resolved topology, CURVE keys when
enabled, registry.json), starts the registry and the supervisor in this event
loop, starts every role instance, and waits until the run ends: the roles marked
`ends_run` finished, `troupe stop` or Ctrl-C asked for it, or a role could not be
restarted. It then stops every role in order, so no process outlives it. A
second Ctrl-C kills what is left at once.

``python -m launch.launcher RUN_DIR`` runs an already prepared run directory in
the background (`start_detached`: `troupe launch --detach` and the Python `Run`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from launch.rundir import RunInfo, read_topology, write_run_info, write_topology
from launch.status import HealthWatch, StatusView
from launch.supervisor import StartupError, Supervisor, runtime_settings_for
from launch.topology import Topology, resolved, validate
from runtime.actor import start_actor
from runtime.host import run_event_loop
from runtime.registry import Registry
from runtime.run_dir import RunDir
from runtime.security import generate_keys, generate_secret


def prepare_run_dir(topology: Topology, configs: dict[str, Any], run_dir: Path) -> Topology:
    """Create the run directory, the run's secret (and CURVE keys if enabled), and the
    resolved topology.yaml. A run directory used again (to resume) keeps its credentials.

    Returns the topology with its runtime settings pointing at the credentials.
    """
    RunDir(run_dir).logs.mkdir(parents=True, exist_ok=True)
    settings = runtime_settings_for(topology, run_dir)
    assert settings.secret_file is not None
    generate_secret(settings.secret_file)
    if settings.curve_keys_dir is not None and not (Path(settings.curve_keys_dir) / "server.key_secret").exists():
        generate_keys(settings.curve_keys_dir)
    topology = topology.model_copy(update={"runtime": settings, "run_dir": str(run_dir)})
    write_topology(run_dir, resolved(topology, configs))
    return topology


async def launch_run(topology: Topology, configs: dict[str, Any], run_dir: Path, view: StatusView,
                     spawn: Callable[..., Awaitable[Any]] | None = None, on_stop: Callable[[], Any] | None = None) -> int:
    """Run a prepared topology to its end; returns the exit code (0 finished or stopped, 1 failed).

    Args:
        spawn: how instances start (default: processes on this host, `runtime.spawn.spawn_actor`;
            `launch.slurm_steps.SlurmSpawner`: job steps on the allocation's nodes).
        on_stop: called when the run ends, before the roles stop (`troupe launch --slurm`
            ends the jobs attached to the run there).
    """
    run_dir = run_dir.resolve()
    settings = topology.runtime
    bind = f"tcp://{topology.network.host}:*"
    common = {"settings": settings, "run": topology.name, "run_dir": run_dir}
    registry = Registry("registry", **common)
    registry_task = await start_actor(registry, endpoint=bind)
    assert registry.endpoint is not None
    supervisor = Supervisor("supervisor", topology=topology, configs=configs, registry_endpoint=registry.endpoint,
                            notify=view.notify, **({"spawn": spawn} if spawn is not None else {}), **common)
    supervisor_task = await start_actor(supervisor, endpoint=bind, registry=registry.endpoint)
    await supervisor.watch_membership()
    info = RunInfo(
        run=topology.name, registry=registry.endpoint, supervisor=supervisor.endpoint or "", launcher_pid=os.getpid(),
        host=socket.gethostname(), started_at=time.time(), curve_keys_dir=settings.curve_keys_dir, secret_file=settings.secret_file,
        state="starting",
    )
    write_run_info(run_dir, info)
    interrupted = _handle_signals(supervisor)
    outcome = "failed"
    try:
        view.notify(f"run {topology.name} in {run_dir}: starting {sum(r.count for r in topology.roles.values())} instances")
        try:
            await supervisor.start_roles()
        except StartupError as error:
            supervisor.failure = f"startup failed:\n{error}"
        else:
            write_run_info(run_dir, info.model_copy(update={"state": "running"}))
            view.notify(f"run {topology.name} is up: troupe ps {run_dir} | troupe logs {run_dir} | troupe stop {run_dir}")
            view.start(supervisor, registry)
            health = HealthWatch(run_dir)
            while not supervisor.finished.done():
                view.refresh(supervisor, registry)
                for alert in health.poll():
                    view.notify(f"health alert {alert.line()}")
                await asyncio.wait({supervisor.finished}, timeout=0.5)
            outcome = supervisor.finished.result()
    finally:
        view.stop()
        if on_stop is not None:
            await asyncio.to_thread(on_stop)
        view.notify("stopping every role in order")
        await supervisor.stop_all()
        final = "failed" if outcome == "failed" or supervisor.failure else "finished"
        write_run_info(run_dir, info.model_copy(update={"state": final}))
        supervisor.stop()
        await asyncio.gather(supervisor_task, return_exceptions=True)
        registry.stop()  # last: everyone else has deregistered by now
        await asyncio.gather(registry_task, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(signum)
    if supervisor.failure:
        print(f"run {topology.name} FAILED: {supervisor.failure}", file=sys.stderr, flush=True)
        return 1
    view.notify(f"run {topology.name} {'stopped' if outcome == 'stopped' or interrupted.is_set() else 'finished'}")
    return 0


def _handle_signals(supervisor: Supervisor) -> asyncio.Event:
    """First Ctrl-C/SIGTERM: stop in order. Second: kill every instance at once."""
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if not interrupted.is_set():
            interrupted.set()
            supervisor.notify("interrupted: stopping the run (again to kill it)")
            if not supervisor.finished.done():
                supervisor.finished.set_result("stopped")
            return
        supervisor.notify("killing every instance now")
        for instance in supervisor.instances.values():
            if instance.process is not None:
                instance.stop_requested = True
                instance.process.kill()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    return interrupted


def start_detached(run_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m launch.launcher RUN_DIR`` in a session of its own (a Ctrl-C
    meant for the caller does not reach it), writing to the run's launcher.log."""
    with open(RunDir(run_dir).launcher_log, "ab") as output:
        return subprocess.Popen([sys.executable, "-m", "launch.launcher", str(run_dir)], stdin=subprocess.DEVNULL,
                                stdout=output, stderr=output, start_new_session=True)


def run_prepared(run_dir: Path, live: bool | None = None) -> int:
    """Launch the topology already written to `run_dir` (the detached launcher's entry)."""
    topology, configs, problems = validate(read_topology(run_dir), resolved_copy=True)
    if topology is None:
        print("\n".join(str(problem) for problem in problems), file=sys.stderr)
        return 2
    return run_event_loop(lambda: launch_run(topology, configs, run_dir, StatusView(live)), topology.runtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.launcher", description="Run a prepared run directory.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    return run_prepared(args.run_dir, live=False)


if __name__ == "__main__":
    sys.exit(main())
