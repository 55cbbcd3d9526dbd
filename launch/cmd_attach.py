"""`troupe attach RUN_DIR ROLE [-n N] [--set k=v ...]`: add role processes to a running topology.

By default the run's supervisor starts the new instances (they are supervised and
stopped with the run). With ``--here`` this command starts them itself, on this
machine, and supervises them until it is stopped: that is how a second host joins
a run, given the registry's address (``--registry``, default from the run
directory's registry.json) and the run's keys.

With ``--slurm [--nodes K]`` it submits a Slurm job instead, whose batch script runs
``troupe attach --here --in-allocation``: the new instances are that job's steps,
spread over its nodes, and join the run as any attached instance does. The run's
launcher cancels the job when the run ends (`launch.slurm_launch`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory (its topology.yaml, registry.json and keys/)")
    parser.add_argument("role", help="the role to add instances of")
    parser.add_argument("-n", "--count", type=int, default=1, help="how many instances (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override the role's config block, e.g. --set work_s=0.1 (repeatable)")
    parser.add_argument("--here", action="store_true",
                        help="start the instances from this command, on this machine, and supervise them here")
    parser.add_argument("--registry", default=None, help="the registry's endpoint (with --here; default: registry.json)")
    parser.add_argument("--host", default=None, help="address the new instances bind (with --here; default: the topology's)")
    parser.add_argument("--slurm", action="store_true", help="submit a Slurm job whose steps are the new instances")
    parser.add_argument("--nodes", type=int, default=1, metavar="K", help="nodes of that job (with --slurm; default 1)")
    parser.add_argument("--sbatch", dest="sbatch_options", action="append", default=[], metavar="OPTION",
                        help="an sbatch option for that job, e.g. --sbatch=--time=1:00:00 (repeatable)")
    parser.add_argument("--in-allocation", action="store_true", help=argparse.SUPPRESS)  # the attach job's own script


def run(args: argparse.Namespace) -> int:
    from launch.client import ask_supervisor, live_run
    from launch.rundir import RunDirError
    from launch.slurm import SlurmError
    from protocols.supervision import Attach
    from runtime.errors import RemoteError

    if not 1 <= args.count <= Attach.MAX_COUNT:
        print(f"troupe attach: -n must be between 1 and {Attach.MAX_COUNT}", file=sys.stderr)
        return 2
    try:
        if args.slurm:
            return _submit_attach(args)
        if args.here:
            return asyncio.run(attach_here(args))
        info = live_run(args.run_dir)
        attached = asyncio.run(ask_supervisor(info, Attach(args.role, args.count, args.overrides), timeout=300))
    except RemoteError as error:
        print(f"troupe attach: {error.remote_message}", file=sys.stderr)
        return 1
    except (RunDirError, SlurmError) as error:  # no live run; or Slurm said no (in an attach job)
        print(f"troupe attach: {error}", file=sys.stderr)
        return 1
    print(f"attached {', '.join(attached.names)} to run {info.run}")
    return 0


def _submit_attach(args: argparse.Namespace) -> int:
    from launch.slurm import SlurmError
    from launch.slurm_launch import submit_attach

    if args.nodes < 1:
        print("troupe attach: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        job_id, script = submit_attach(args.run_dir, args.role, args.count, args.nodes, args.overrides, args.sbatch_options)
    except SlurmError as error:
        print(f"troupe attach: {error}", file=sys.stderr)
        return 1
    print(f"submitted job {job_id}: {args.count} more {args.role} instance(s) join the run in {args.run_dir} "
          f"once it starts (batch script {script})")
    return 0


async def attach_here(args: argparse.Namespace) -> int:
    from launch.rundir import read_run_info, read_topology
    from launch.supervisor import Supervisor, runtime_settings_for
    from launch.topology import NetworkSpec, validate
    from protocols.membership import Lookup
    from runtime.actor import start_actor
    from runtime.client import Client

    topology, configs, problems = validate(read_topology(args.run_dir), resolved_copy=True)
    if topology is None:
        print("\n".join(map(str, problems)), file=sys.stderr)
        return 2
    if args.role not in topology.roles:
        print(f"troupe attach: the run has no role {args.role!r}; it has {sorted(topology.roles)}", file=sys.stderr)
        return 2
    info = read_run_info(args.run_dir)
    registry = args.registry or info.registry
    settings = runtime_settings_for(topology, Path(args.run_dir))
    host = args.host or topology.network.host
    spawn: dict[str, Any] = {}
    if args.in_allocation:  # the batch script of `troupe attach --slurm`: this job's steps
        from launch.slurm_launch import attach_spawning

        host, spawn["spawn"] = await asyncio.to_thread(attach_spawning, Path(args.run_dir).resolve(), topology)
    local = topology.model_copy(update={
        "runtime": settings, "network": NetworkSpec(host=host, curve=topology.network.curve),
        "roles": {args.role: topology.roles[args.role]},
    })
    async with Client(f"attach-{os.getpid()}", registry=registry, settings=settings) as client:
        existing = (await client.ask(registry, Lookup(role=args.role), timeout=10)).records
    first = 1 + max((record.instance for record in existing), default=-1)
    supervisor = Supervisor(f"attacher-{args.role}-{os.getpid()}", topology=local, configs={args.role: configs.get(args.role)},
                            registry_endpoint=registry, settings=settings, run=topology.name, run_dir=args.run_dir, **spawn)
    task = await start_actor(supervisor, endpoint=f"tcp://{host}:*", registry=registry)
    supervisor.state = "running"
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: supervisor.finished.done() or supervisor.finished.set_result("stopped"))
    try:
        config = supervisor.attach_config(args.role, args.overrides)
        names = await supervisor.start_instances(args.role, first, args.count, config)
        print(f"attached {', '.join(names)} to run {topology.name} from this host; Ctrl-C stops them", flush=True)
        outcome = await supervisor.finished
    finally:
        await supervisor.stop_all()
        supervisor.stop()
        await asyncio.gather(task, return_exceptions=True)
    if outcome == "failed":
        print(f"troupe attach: {supervisor.failure}", file=sys.stderr)
        return 1
    return 0
