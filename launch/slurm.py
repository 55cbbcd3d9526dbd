"""Slurm: the allocation a run is placed on, and the batch scripts that start one.

Slurm places and starts processes; troupe does everything after (registry,
supervision, ZeroMQ, the weight channel). This module holds what troupe asks Slurm:

* `Allocation.current`: the job's nodes (``scontrol show hostnames``) and the address
  each one's actors bind (its ``NodeAddr``, resolved to an IPv4 address here, on the
  batch host, so every node is reached at the address Slurm itself uses);
* `check_shared_run_dir`: one step per node reads back a token written by the batch
  host, because every instance reads the run's keys and writes its logs there;
* `submit_script` and `submit`: the sbatch script of `troupe submit` and `troupe attach
  --slurm`, written into the run directory before it is submitted;
* `cancel_jobs`: the jobs attached to a run end with it.

Starting an instance as a job step is `launch.slurm_steps`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.run_dir import RunDir

COMMAND_TIMEOUT_S = 60.0
"""How long one Slurm command (scontrol, sbatch, srun of the check) may take."""


class SlurmError(RuntimeError):
    """Slurm is missing, or said no; the text says what to do."""


def slurm_command(*command: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a Slurm command and return its output; SlurmError with its message when it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} is not installed here: run troupe on a Slurm login or compute node") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(command[:3])} ... did not answer within {timeout:g} s") from None
    if result.returncode != 0:
        raise SlurmError(f"{' '.join(command[:4])} ... failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Allocation:
    """The Slurm job a run's steps start in."""

    job_id: str
    nodes: list[str]
    """Node names, in Slurm's order (a topology's node index counts in this list)."""
    addresses: dict[str, str]
    """Each node's IPv4 address, where its actors bind."""
    batch_node: str | None
    """The node this process runs on (the batch host), None outside a job step (salloc)."""

    @classmethod
    def current(cls, environ: dict[str, str] | None = None) -> Allocation:
        """The allocation this process runs in (``salloc`` or an ``sbatch`` script).

        Raises:
            SlurmError: not inside an allocation, or Slurm cannot describe its nodes.
        """
        environ = dict(os.environ) if environ is None else environ
        job_id, node_list = environ.get("SLURM_JOB_ID"), environ.get("SLURM_JOB_NODELIST")
        if not job_id or not node_list:
            raise SlurmError(
                "troupe launch --slurm runs inside a Slurm allocation (SLURM_JOB_ID is not set): "
                "use `troupe submit TOPOLOGY --nodes N`, or run it from `salloc` or an sbatch script"
            )
        nodes = slurm_command("scontrol", "show", "hostnames", node_list).split()
        return cls(job_id, nodes, node_addresses(nodes), environ.get("SLURMD_NODENAME"))

    def address(self, node: str) -> str:
        return self.addresses[node]


def node_addresses(nodes: list[str]) -> dict[str, str]:
    """Each node's ``NodeAddr`` from ``scontrol show node``, resolved to an IPv4 address."""
    described: dict[str, str] = {}
    for line in slurm_command("scontrol", "show", "node", "--oneliner", ",".join(nodes)).splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if "NodeName" in fields:
            described[fields["NodeName"]] = fields.get("NodeAddr") or fields["NodeName"]
    addresses = {}
    for node in nodes:
        address = described.get(node, node)
        try:
            addresses[node] = socket.getaddrinfo(address, None, socket.AF_INET)[0][4][0]
        except socket.gaierror as error:
            raise SlurmError(f"node {node}'s address {address!r} does not resolve here ({error})") from None
    return addresses


def check_shared_run_dir(run_dir: Path, allocation: Allocation) -> None:
    """Check that every node of the allocation reads the run directory as this host wrote it.

    Raises:
        SlurmError: naming the nodes that do not see it, and what to do.
    """
    token = secrets.token_hex(16)
    check = RunDir(run_dir).shared_check
    check.parent.mkdir(parents=True, exist_ok=True)
    check.write_text(token)
    script = 'printf "%s %s\\n" "$SLURMD_NODENAME" "$(cat "$1" 2>/dev/null || echo none)"'
    output = slurm_command(
        "srun", "--overlap", f"--nodes={len(allocation.nodes)}", "--ntasks-per-node=1",
        f"--nodelist={','.join(allocation.nodes)}", "--job-name=troupe-shared-check", "--quiet",
        "sh", "-c", script, "check", str(check),
    )
    seen = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    blind = [node for node in allocation.nodes if seen.get(node, "").strip() != token]
    if blind:
        raise SlurmError(
            f"the run directory {run_dir} is not shared with node{'s' if len(blind) > 1 else ''} {', '.join(blind)}: "
            "every instance reads the run's keys and writes its logs there, so it must be on a file system every "
            "node mounts at the same path (NFS, Lustre, GPFS, ...); pass --run-dir on such a file system"
        )


def troupe_command() -> list[str]:
    """How a batch script runs this installation's troupe (the same interpreter)."""
    return [sys.executable, "-m", "launch.cli"]


def submit_script(command: list[str], *, job_name: str, nodes: int, output: str, options: list[str],
                  workdir: Path, note: str) -> str:
    """An sbatch script that runs `command` (a troupe command line) in `workdir`.

    Args:
        options: further sbatch options (``--time=2:00:00``, ``--partition=gpu``), one
            ``#SBATCH`` line each, after troupe's own (so they win).
        note: a comment saying what wrote the script and how to submit it again.
    """
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --output={output}",
        *(f"#SBATCH {option}" for option in options),
        "",
        *(f"# {line}" for line in note.splitlines()),
        f"cd {shlex.quote(str(workdir))}",
        "exec " + " ".join(shlex.quote(part) for part in command),
        "",
    ]
    return "\n".join(lines)


def submit(script: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    return slurm_command("sbatch", "--parsable", str(script)).strip().split(";")[0]


def record_attached_job(run_dir: Path, job_id: str) -> None:
    """Note a job that joined the run, so that the launcher ends it with the run."""
    path = RunDir(run_dir).attached_jobs
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(f"{job_id}\n")


def cancel_attached_jobs(run_dir: Path) -> list[str]:
    """``scancel`` every job `troupe attach --slurm` added to the run (its steps get
    SIGTERM, then SIGKILL after Slurm's KillWait); returns their ids."""
    path = RunDir(run_dir).attached_jobs
    jobs = path.read_text().split() if path.exists() else []
    if jobs:
        try:
            slurm_command("scancel", *jobs)
        except SlurmError:  # a job that already ended makes scancel fail; the others are cancelled
            pass
    return jobs
