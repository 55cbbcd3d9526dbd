"""The Python API of a training run, for notebooks and scripts:

    from launch import Run
    run = Run.from_topology("examples/arith-grpo.yaml")
    run.register_evaluator(MyEvaluator(eval_rows))     # evaluate(ctx) -> dict of floats
    for step, metrics in enumerate(run.train()):       # one dict per step
        print(step, metrics["train/reward"], metrics["train/kl_div"], metrics["train/loss"])
    run.export("fine_tuned_llm")                        # Hugging Face save_pretrained

`train()` launches the topology exactly as `troupe launch --detach` does (every role its
own process, supervised by a launcher in the background) and follows the run's
``metrics.jsonl``, yielding each training step's values as the controller writes them.
Registered evaluators run in this process between two yields against the live
generator and reward roles (training goes on meanwhile); their numbers are added to
the step's dict as ``eval/<name>`` and written to ``metrics.jsonl``. Leaving the loop
early (break, an exception, Ctrl-C) stops the run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from protocols.membership import Lookup, LookupResult
from roles.evaluator import EvalContext, Evaluator
from roles.metrics import MetricsLog, read_metrics

__all__ = ["EvalContext", "Evaluator", "Run", "RunError"]


class RunError(RuntimeError):
    """The run could not start, or failed; the text says where to look."""


async def ask_ready_role(run_dir: Path, role: str, message: Any, timeout: float = 600.0) -> Any:
    from launch.client import client_for
    from launch.rundir import read_run_info
    from runtime.outbox import ActorRef

    info = read_run_info(run_dir)
    registry = info.registry
    async with client_for(info, "python-api", run_dir) as client:
        deadline = time.monotonic() + timeout
        while True:
            found: LookupResult = await client.ask(ActorRef("registry", registry), Lookup(role=role), timeout=30)
            ready = [record for record in found.records if record.state == "ready"]
            if ready:
                return await client.ask(ready[0].name, message, timeout=max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise RunError(f"no ready {role} instance in the run")
            await asyncio.sleep(0.5)


class Run:
    """One training run of a topology file."""

    RELEASE_FILE = "python-api.release"

    def __init__(self, topology: Path, overrides: Sequence[str] = (), run_dir: Path | None = None, controller: str = "controller") -> None:
        self.topology = topology
        self.controller = controller
        self.overrides = list(overrides)
        self.run_dir = run_dir
        self.evaluators: list[tuple[str, Evaluator]] = []
        self._tokenizer: Any = None

    @classmethod
    def from_topology(cls, path: str | Path, overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> Run:
        """A run of the topology at `path` (``--set``-style `overrides`; `run_dir`
        defaults to ``runs/<name>-<time>``). Validated now; nothing starts yet."""
        from launch.topology import TopologyError, load_topology

        try:
            topology, _ = load_topology(str(path), list(overrides))
        except TopologyError as error:
            raise RunError(str(error)) from error
        if run_dir is None:
            from launch.rundir import default_run_dir

            run_dir = Path(topology.run_dir) if topology.run_dir else default_run_dir(topology.name)
        controllers = [name for name, role in topology.roles.items() if topology.entry_point(name) == "roles.controller:Controller"]
        if len(controllers) != 1:
            raise RunError(f"{path} needs exactly one controller role, found {controllers}")
        return cls(Path(path), overrides, Path(run_dir), controllers[0])

    def register_evaluator(self, evaluator: Evaluator, name: str | None = None) -> None:
        """Run `evaluator` after every ``evaluator.every_steps`` training steps."""
        if not callable(getattr(evaluator, "evaluate", None)):
            raise TypeError(f"{type(evaluator).__name__} has no evaluate(ctx) method")
        self.evaluators.append((name or type(evaluator).__name__, evaluator))

    def train(self, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
        """Launch the run and yield each step's metrics until it ends (stopping it if the
        loop is left early)."""
        assert self.run_dir is not None
        command = [str(Path(sys.executable).parent / "troupe"), "launch", str(self.topology), "--run-dir", str(self.run_dir), "--detach"]
        release = self.run_dir / self.RELEASE_FILE
        release.unlink(missing_ok=True)
        overrides = list(self.overrides)
        if self.evaluators:  # the roles stay up until the evaluators are done with them
            overrides.append(f"roles.{self.controller}.config.release_file={self.RELEASE_FILE}")
        for override in overrides:
            command += ["--set", override]
        launched = subprocess.run(command, capture_output=True, text=True)
        if launched.returncode != 0:
            raise RunError(f"troupe launch failed ({launched.returncode}):\n{launched.stdout}{launched.stderr}")
        seen = 0
        finished = False
        try:
            while True:
                records = read_metrics(self.run_dir)
                new, seen = records[seen:], len(records)
                for record in new:
                    if "train/reward" in record:
                        yield self._with_evaluations(record)
                if new:
                    continue
                if self._steps_done():
                    release.parent.mkdir(parents=True, exist_ok=True)
                    release.touch()
                state = self._state()
                if state in ("finished", "failed"):
                    if len(read_metrics(self.run_dir)) == seen:
                        if state == "failed":
                            raise RunError(f"the run failed; see {self.run_dir}/launcher.log and `troupe logs {self.run_dir}`")
                        finished = True
                        return
                time.sleep(poll_s)
        finally:
            if not finished:
                self.stop()

    def stop(self) -> None:
        """Stop every role of the run (no-op when it already ended)."""
        if self.run_dir is not None and (self.run_dir / "registry.json").exists() and self._state() in ("starting", "running"):
            subprocess.run([str(Path(sys.executable).parent / "troupe"), "stop", str(self.run_dir)], capture_output=True, text=True)

    def export(self, out_dir: str | Path, step: int | None = None) -> Path:
        """The policy of the run's newest checkpoint (or `step`'s) as a Hugging Face
        directory: safetensors, config, generation config, tokenizer."""
        from launch.export import export_checkpoint

        assert self.run_dir is not None
        return export_checkpoint(self.run_dir, Path(out_dir), step)

    # ------------------------------------------------------------------ internals
    def _steps_done(self) -> bool:
        """The controller wrote its last step and evaluation: nothing more will come."""
        assert self.run_dir is not None
        log = self.run_dir / "logs" / f"{self.controller}-0.jsonl"
        return log.exists() and '"controller.steps_done"' in log.read_text()

    def _state(self) -> str:
        assert self.run_dir is not None
        return json.loads((self.run_dir / "registry.json").read_text())["state"]

    def _with_evaluations(self, record: dict[str, Any]) -> dict[str, Any]:
        step = int(record["step"])
        due = [(name, e) for name, e in self.evaluators if step % max(1, getattr(e, "every_steps", 1)) == 0]
        if not due:
            return record
        assert self.run_dir is not None
        run_dir = self.run_dir
        context = EvalContext(step, int(record.get("weights/version", -1)), run_dir, self._load_tokenizer(),
                              lambda role, message: asyncio.run(ask_ready_role(run_dir, role, message)))
        values: dict[str, float] = {}
        for name, evaluator in due:
            for key, value in evaluator.evaluate(context).items():
                values[f"eval/{key}" if len(due) == 1 else f"eval/{name}/{key}"] = float(value)
        # one whole-line append, as the controller's and the evaluator role's (they write concurrently)
        MetricsLog(self.run_dir, tensorboard=False).write(step, values, source="python-evaluators")
        return {**record, **values}

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            import yaml
            from transformers import AutoTokenizer

            assert self.run_dir is not None
            resolved = yaml.safe_load((self.run_dir / "topology.yaml").read_text())
            controller = next(role for role in resolved["roles"].values() if role["entry"] == "controller")
            self._tokenizer = AutoTokenizer.from_pretrained(controller["config"]["tokenizer"], local_files_only=True)
        return self._tokenizer
