"""A synchronous GRPO run through the Python API: `Run.from_topology(...)`, `register_evaluator`, `train()`, `export()`,
`Run.attach(...)`, `stop()`, against real runs (every role its own process) of the tiny arithmetic example.
The API talks to the run over the runtime: it starts the launcher itself and receives metrics as messages."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

import psutil

from launch import Evaluator, Run
from tests.e2e.cli import run_state
from tests.e2e.test_rl_run import STEP_NAMES, arith, check_step_records, handled, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class HeldOutAccuracy(Evaluator):
    """Greedy accuracy on a few held-out rows through the live generator and reward."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.versions: list[int] = []

    def evaluate(self, ctx):  # type: ignore[no-untyped-def]
        samples = ctx.generate([row["prompt"] for row in self.rows], n=1, top_k=1, max_new_tokens=4)
        self.versions += [sample["version"] for sample in samples]
        scores = ctx.score([s["prompt"] for s in samples], [s["response"] for s in samples],
                           [row["ground_truth"] for row in self.rows], "arith")
        return {"accuracy": sum(scores) / len(scores), "step_seen": float(ctx.step)}


def test_run_trains_evaluates_and_exports(tmp_path: Path, run_dir: Path, arith: Path) -> None:  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in (arith / "heldout.jsonl").read_text().splitlines()[:8]]
    # an entropy bonus moves the weights even when every reward of the tiny model is 0
    run = Run.from_topology(rl_topology(tmp_path, arith, steps=3), ["roles.trainer.config.entropy_coef=0.05"], run_dir=run_dir)
    evaluator = HeldOutAccuracy(rows)
    run.register_evaluator(evaluator)
    seen = []
    for step, metrics in enumerate(run.train(), start=1):
        assert metrics["step"] == step and STEP_NAMES <= metrics.keys()
        assert metrics["eval/step_seen"] == step and 0.0 <= metrics["eval/accuracy"] <= 1.0
        seen.append(metrics)
        if step == 1:  # a second client joins the run under way: what came before is in its subscription's reply
            watcher = Run.attach(run_dir)
            followed = watcher.follow()
            watched = [next(followed)]
    assert len(seen) == 3
    watched += list(followed)  # the rest came as messages while the run went on; then the end
    assert watched == [{k: v for k, v in m.items() if not k.startswith("eval/")} for m in seen]
    assert [record["step"] for record in run.evaluations] == [0, 3]  # the controller's held-out evaluations
    assert len(handled(run_dir, "python-api-", "run.steps_done")) == 2  # both clients got the end as a message
    assert len(handled(run_dir, "python-api-", "run.step_metrics")) >= 3
    assert len(evaluator.versions) == 3 * len(rows) and max(evaluator.versions) >= 1  # trained weights answered
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval/accuracy" in r and r.get("source") == "python-evaluators"] == [1, 2, 3]
    check_step_records(run_dir, 3, "sync")  # the synchronous run itself: every name, versions, traces

    out = run.export(tmp_path / "exported")
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    initial = AutoModelForCausalLM.from_pretrained(arith / "model", local_files_only=True)
    assert tokenizer.decode(tokenizer("12+7=")["input_ids"]) == "12+7="
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, initial.state_dict()[name])]
    assert changed, "the exported model is the initial one"
    assert json.loads((out / "troupe_export.json").read_text())["weights_version"] == seen[-1]["weights/version"]


def test_the_python_api_starts_and_stops_runs_itself_without_the_troupe_command() -> None:
    source = (Path(__file__).resolve().parents[2] / "launch" / "run.py").read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not imported & {"subprocess", "multiprocessing"} and '"troupe"' not in source


def test_stop_during_training_ends_every_role_process(tmp_path: Path, run_dir: Path, arith: Path) -> None:  # noqa: F811
    run = Run.from_topology(rl_topology(tmp_path, arith, steps=50), run_dir=run_dir)
    steps = run.train()
    assert next(steps)["step"] == 1
    pids = {row["pid"] for row in run.status() if row["pid"] and row["pid"] != os.getpid()}
    assert len(pids) >= 6  # the launcher's supervisor and every role: controller, generator, trainer, reference, reward
    assert run.stop().state == "finished"
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    steps.close()  # leaving the loop after the run stopped: nothing more to stop
    assert run_state(run_dir) == "finished"
    trained = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train/reward" in line]
    assert trained and len(trained) < 50
