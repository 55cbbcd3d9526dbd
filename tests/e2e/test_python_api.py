"""A synchronous GRPO run through the Python API: `Run.from_topology(...)`, `register_evaluator`, `train()`, `export()`,
against a real run (every role its own process) of the tiny arithmetic example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launch import Evaluator, Run
from tests.e2e.test_rl_run import STEP_NAMES, arith, check_step_records, rl_topology  # noqa: F401 - arith is a fixture

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
    assert len(seen) == 3
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
