"""The tool-use example end to end, as `make demo-tools` runs it: examples/tools/demo.py
builds the quick model and data (a tiny chat model warm-started to call the calculator
now and then), launches examples/tools-grpo.yaml as written with the environment role,
and prints the held-out episodes before and after. The quick build and a few steps
cannot show the rise the full example does (docs/agents.md has its numbers); what is
checked is the example's own path: the warm start calls the tool and succeeds with it,
episodes train and evaluate through real role processes, and the report reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from roles.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "tools" / "demo.py"


def test_the_tools_demo_builds_a_calling_model_trains_it_on_calculator_episodes_and_reports(tmp_path: Path) -> None:
    data, run_dir = tmp_path / "data", tmp_path / "run"
    overrides = ["roles.controller.config.steps=2", "roles.controller.config.prompts_per_step=4",
                 "roles.controller.config.sampling.n=4", "roles.controller.config.eval.every_steps=2",
                 "roles.controller.config.eval.sampling.n=1"]
    demo = subprocess.run([sys.executable, str(DEMO), "--quick", "--data", str(data), "--run-dir", str(run_dir),
                           *(f"--set={override}" for override in overrides)],
                          capture_output=True, text=True, timeout=540, cwd=REPO)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    built = json.loads((data / "build.json").read_text())
    assert built["quick"] and built["heldout_rows"] == 64
    warm = built["heldout_episodes"]
    assert 0.0 < warm["tool_call_rate"] < 1.0  # it chooses: sometimes the calculator, sometimes alone
    assert warm["success_with_call"] > warm["success_alone"]  # the premise: calling pays

    steps = [record for record in read_metrics(run_dir) if "train/reward" in record]
    assert [record["step"] for record in steps] == [1, 2]
    assert all(record["train/episode_turns"] >= 1.0 for record in steps)
    assert any(record["train/episode_tool_calls"] > 0.0 for record in steps)  # calls were made and trained on
    evaluations = [record for record in read_metrics(run_dir) if "eval/accuracy" in record]
    assert [record["step"] for record in evaluations] == [0, 2]  # held-out episodes before and after
    for record in evaluations:
        assert record["eval/samples"] == 64 and 0.0 <= record["eval/accuracy"] <= 1.0
        assert record["eval/episode_tool_calls"] >= 0.0 and "eval/episode_tool_errors" in record

    sampled = [json.loads(line) for line in (run_dir / "eval" / "step_0.jsonl").read_text().splitlines()]
    assert any("<tool_call>" in row["response"] for row in sampled)
    assert "held-out success: before" in demo.stdout and "tool calls/episode" in demo.stdout
