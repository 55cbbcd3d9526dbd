"""The run directory: the one owner of where a run keeps what.

Every process of a run (the launcher, each role, the command line reading it
afterwards) finds its files through `RunDir`; no other module spells a path of the
run directory::

    runs/<run>/
      topology.yaml              the resolved topology (every default filled in)
      registry.json              where the registry and supervisor listen (runtime.run_info)
      launcher.log               what the launcher printed (`troupe launch --detach`)
      keys/                      the run's secret, CURVE keys when enabled (runtime.security)
      logs/<instance>.jsonl      structured message log of each actor (runtime.msglog)
      logs/<instance>.stderr     what each instance's process printed
      metrics.jsonl              one line per step and evaluation (roles.metrics)
      tb/                        TensorBoard events of the same numbers
      eval/step_N.jsonl          every held-out sample of the evaluation after step N
      checkpoints/step_N/        one checkpoint (roles.checkpoints: when it is complete)
      slurm/submit.sbatch        the batch script `troupe submit` wrote and submitted
      slurm/attach-<role>-<time>.sbatch  a batch script `troupe attach --slurm` submitted
      slurm/job-<id>.out         what a Slurm job's batch script printed
      slurm/attached-jobs        ids of the jobs `troupe attach --slurm` submitted (one a line)
      slurm/ready/<instance>.json  written by an instance started as a job step once it serves
      slurm/shared-check         a token every node must read (the run directory is shared)

A run directory is a runtime idea, as the logs and `registry.json` in it are; the RL
files (metrics, evaluations, checkpoints) are named here too so that one module holds
the whole layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runtime.run_info import REGISTRY_FILE, RunDirError, RunInfo, read_run_info, write_run_info

STEP_PREFIX = "step_"


@dataclass(frozen=True, init=False)
class RunDir:
    """The paths of one run directory (nothing is created or read until asked)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str] | RunDir) -> None:
        object.__setattr__(self, "path", path.path if isinstance(path, RunDir) else Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ launch
    @property
    def topology(self) -> Path:
        """The resolved topology the run was launched with."""
        return self.path / "topology.yaml"

    @property
    def registry_file(self) -> Path:
        """Where the registry and supervisor listen (`read_info`)."""
        return self.path / REGISTRY_FILE

    @property
    def launcher_log(self) -> Path:
        return self.path / "launcher.log"

    @property
    def keys(self) -> Path:
        """The run's secret and CURVE keys (runtime.security)."""
        return self.path / "keys"

    @property
    def secret(self) -> Path:
        return self.keys / "secret"

    def read_topology(self) -> dict[str, Any]:
        """The resolved topology, as the launcher wrote it.

        Raises:
            RunDirError: there is none (not a run directory).
        """
        try:
            return yaml.safe_load(self.topology.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.topology} does not exist: this is not a run directory") from None

    def role_config(self, *entries: str) -> dict[str, Any] | None:
        """The resolved config of the first role whose ``entry`` is one of `entries`
        (``"trainer", "roles.trainer:Trainer"``); None when the run has none."""
        for role in self.read_topology()["roles"].values():
            if role["entry"] in entries:
                return role["config"]
        return None

    def read_info(self) -> RunInfo:
        """registry.json; raises runtime.run_info.RunDirError when there is none."""
        return read_run_info(self.path)

    def write_info(self, info: RunInfo) -> None:
        write_run_info(self.path, info)

    # ------------------------------------------------------------------ logs
    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def message_log(self, instance: str) -> Path:
        """The structured message log of one actor instance (``controller-0``)."""
        return self.logs / f"{instance}.jsonl"

    def stderr_log(self, instance: str) -> Path:
        """What one instance's process printed."""
        return self.logs / f"{instance}.stderr"

    # ------------------------------------------------------------------ results
    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def evaluations(self) -> Path:
        return self.path / "eval"

    def eval_samples(self, step: int) -> Path:
        """Every held-out sample of the evaluation after `step`."""
        return self.evaluations / f"{STEP_PREFIX}{step}.jsonl"

    def evaluated_steps(self) -> list[int]:
        """The steps with an ``eval/step_N.jsonl``, in order."""
        if not self.evaluations.is_dir():
            return []
        return sorted(step for path in self.evaluations.glob(f"{STEP_PREFIX}*.jsonl")
                      if (step := step_of(path.stem)) is not None)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint folder of `step` (whether it is complete: roles.checkpoints)."""
        return self.checkpoints / f"{STEP_PREFIX}{step}"

    # ------------------------------------------------------------------ slurm
    @property
    def slurm(self) -> Path:
        """What running on a Slurm cluster keeps in the run directory (launch.slurm)."""
        return self.path / "slurm"

    @property
    def sbatch_script(self) -> Path:
        """The batch script `troupe submit` wrote (kept to be read, edited, resubmitted)."""
        return self.slurm / "submit.sbatch"

    def attach_script(self, role: str, stamp: str) -> Path:
        """The batch script of one `troupe attach --slurm`."""
        return self.slurm / f"attach-{role}-{stamp}.sbatch"

    @property
    def job_output(self) -> Path:
        """A job's output file, as an sbatch ``--output`` pattern (``%j``: the job id)."""
        return self.slurm / "job-%j.out"

    @property
    def attached_jobs(self) -> Path:
        """Ids of the jobs `troupe attach --slurm` submitted; the launcher ends them last."""
        return self.slurm / "attached-jobs"

    def ready_file(self, instance: str) -> Path:
        """Where an instance started as a job step says it serves (runtime.host --ready-file)."""
        return self.slurm / "ready" / f"{instance}.json"

    @property
    def shared_check(self) -> Path:
        """A token the launcher writes and every node of the allocation must read back."""
        return self.slurm / "shared-check"

    def is_run_dir(self) -> bool:
        """Whether this looks like a run directory (a resolved topology in it)."""
        return self.topology.is_file()


def step_of(name: str | os.PathLike[str]) -> int | None:
    """N of a name ``step_N`` (a checkpoint folder, an evaluation file's stem); None
    for any other name."""
    digits = Path(name).name.removeprefix(STEP_PREFIX)
    return int(digits) if Path(name).name.startswith(STEP_PREFIX) and digits.isdigit() else None
