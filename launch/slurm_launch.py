"""Running a topology on a Slurm cluster: `troupe launch --slurm`, `troupe submit`, `troupe attach --slurm`.

* `launch_in_allocation` (``troupe launch TOPOLOGY --slurm``, inside ``salloc`` or an
  sbatch script): reads the allocation, checks the placement against its nodes and the
  run directory is shared, turns CURVE on and binds the registry and supervisor on the
  batch host's address, and runs the launcher with `launch.slurm_steps.SlurmSpawner`:
  every instance is a job step on its node, supervised as a local process would be.
* `submit_run` (``troupe submit TOPOLOGY --nodes N``): writes the sbatch script that runs
  the above into the run directory and submits it.
* `submit_attach` (``troupe attach RUN_DIR ROLE --slurm``): submits a job whose batch
  script runs ``troupe attach --here`` with the job's own steps (`attach_spawning`); the
  job is recorded in the run directory, and the run's launcher cancels it when the run
  ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from launch.placement import node_of, node_problems
from launch.rundir import default_run_dir
from launch.slurm import (
    Allocation,
    SlurmError,
    cancel_attached_jobs,
    check_shared_run_dir,
    record_attached_job,
    submit,
    submit_script,
    troupe_command,
)
from launch.slurm_steps import SlurmSpawner
from launch.topology import NetworkSpec, Topology, TopologyError, load_topology
from runtime.run_dir import RunDir
from runtime.security import is_loopback_endpoint


def batch_host_address(allocation: Allocation, topology: Topology) -> str:
    """Where the registry and supervisor bind: the batch node's address, or (from ``salloc``
    on a login node, outside the allocation) the topology's ``network.host``."""
    if allocation.batch_node in allocation.addresses:
        return allocation.address(allocation.batch_node)  # type: ignore[arg-type]
    if is_loopback_endpoint(f"tcp://{topology.network.host}:1"):
        raise SlurmError(
            "this host is not a node of the allocation, so the nodes need its address: "
            "--set network.host=ADDRESS (an address of this host the nodes reach)"
        )
    return topology.network.host


def slurm_topology(topology: Topology, host: str) -> Topology:
    """The topology as it runs across nodes: bound beyond loopback, so CURVE on."""
    return topology.model_copy(update={"network": NetworkSpec(host=host, curve=True)})


def launch_in_allocation(topology_path: str, overrides: list[str], run_dir: Path | None, live: bool | None) -> int:
    """`troupe launch TOPOLOGY --slurm`: run the topology on the allocation's nodes; returns
    the exit code (0 finished or stopped, 1 failed). Raises SlurmError or TopologyError."""
    from launch.launcher import launch_run, prepare_run_dir
    from launch.status import StatusView
    from runtime.host import run_event_loop

    allocation = Allocation.current()
    topology, configs = load_topology(topology_path, overrides)
    problems = node_problems(topology, names=allocation.nodes)
    if problems:
        raise TopologyError(topology_path, problems)
    run_dir = (run_dir or (Path(topology.run_dir) if topology.run_dir else default_run_dir(topology.name))).resolve()
    RunDir(run_dir).logs.mkdir(parents=True, exist_ok=True)
    check_shared_run_dir(run_dir, allocation)
    topology = prepare_run_dir(slurm_topology(topology, batch_host_address(allocation, topology)), configs, run_dir)
    spawner = SlurmSpawner(
        allocation, run_dir, node_for=lambda role, index: node_of(topology.roles[role], index, allocation.nodes),
        gpus_for=lambda role: topology.roles[role].gpus,
    )
    return run_event_loop(
        lambda: launch_run(topology, configs, run_dir, StatusView(live), spawn=spawner,
                           on_stop=lambda: cancel_attached_jobs(run_dir)),
        topology.runtime,
    )


def submit_run(topology_path: str, overrides: list[str], nodes: int, run_dir: Path | None,
               sbatch_options: list[str]) -> tuple[str, Path, Path]:
    """`troupe submit`: validate against `nodes` nodes, write the run directory's sbatch
    script and submit it. Returns (job id, run directory, script). Raises TopologyError or
    SlurmError."""
    topology, _ = load_topology(topology_path, overrides)
    problems = node_problems(topology, count=nodes)
    if problems:
        raise TopologyError(topology_path, problems)
    run_dir = (run_dir or (Path(topology.run_dir) if topology.run_dir else default_run_dir(topology.name))).resolve()
    files = RunDir(run_dir)
    files.slurm.mkdir(parents=True, exist_ok=True)
    command = [*troupe_command(), "launch", str(Path(topology_path).resolve()), "--slurm", "--run-dir", str(run_dir),
               "--no-status", *(part for override in overrides for part in ("--set", override))]
    script = files.sbatch_script
    script.write_text(submit_script(
        command, job_name=f"troupe-{topology.name}", nodes=nodes, output=str(files.job_output),
        options=sbatch_options, workdir=Path.cwd(),
        note=f"Written by `troupe submit`: the run {topology.name} in {run_dir}.\n"
             f"Edit it as you like and submit it again with: sbatch {script}",
    ))
    return submit(script), run_dir, script


def submit_attach(run_dir: Path, role: str, count: int, nodes: int, overrides: list[str],
                  sbatch_options: list[str]) -> tuple[str, Path]:
    """`troupe attach RUN_DIR ROLE --slurm`: submit a job whose steps join the running
    run as `count` more instances of `role`. Returns (job id, script)."""
    run_dir = run_dir.resolve()
    files = RunDir(run_dir)
    topology = files.read_topology()
    if role not in topology["roles"]:
        raise SlurmError(f"the run has no role {role!r}; it has {sorted(topology['roles'])}")
    command = [*troupe_command(), "attach", str(run_dir), role, "--here", "--in-allocation", "-n", str(count),
               *(part for override in overrides for part in ("--set", override))]
    script = files.attach_script(role, time.strftime("%Y%m%d-%H%M%S"))
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(submit_script(
        command, job_name=f"troupe-{topology['name']}-{role}", nodes=nodes, output=str(files.job_output),
        options=sbatch_options, workdir=Path.cwd(),
        note=f"Written by `troupe attach --slurm`: {count} more {role} instance(s) for the run in {run_dir}.\n"
             "The run's launcher cancels this job when the run ends.",
    ))
    job_id = submit(script)
    record_attached_job(run_dir, job_id)
    return job_id, script


def attach_spawning(run_dir: Path, topology: Topology) -> tuple[str, Any]:
    """Inside an attach job: (the batch host's address, a spawner that spreads the new
    instances over the job's nodes as steps)."""
    allocation = Allocation.current()
    check_shared_run_dir(run_dir, allocation)
    spawner = SlurmSpawner(allocation, run_dir, node_for=lambda role, index: allocation.nodes[index % len(allocation.nodes)],
                           gpus_for=lambda role: topology.roles[role].gpus)
    return batch_host_address(allocation, topology), spawner
