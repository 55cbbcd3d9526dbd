"""The evaluation layer on real runs of the tiny arithmetic example: the evaluator role
(its own process, built-in and custom evaluators), TensorBoard's histograms, text and
hyperparameters, then `troupe report` and `troupe compare` on two runs with different
learning rates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from launch import Run
from launch.export import export_checkpoint
from runtime.run_dir import RunDir
from tests.e2e.cli import troupe
from tests.e2e.test_export import PROMPTS, logits_of, trainer_model_at
from tests.e2e.test_rl_run import (  # noqa: F401 - arith is a fixture
    arith,
    check_step_records,
    handled,
    metrics,
    rl_topology,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GREEDY = {"entry": "examples.arith.evaluators:GreedyAccuracy", "args": {"rows": 8, "max_new_tokens": 4}, "name": "greedy"}


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory: pytest.TempPathFactory, arith: Path) -> dict[str, Path]:  # noqa: F811
    """The reinforce-plus-plus recipe, async, at the example's learning rate with
    evaluations every 2 steps, and the rloo recipe, sync, at a higher one on two FSDP
    trainer ranks with micro-batches by a token budget, both evaluated by the evaluator
    role (the recipes' own end-to-end runs: tests/e2e/test_recipes.py)."""
    root = tmp_path_factory.mktemp("lr-runs")
    runs = {}
    for name, recipe, mode, steps, lr in (("async-lr4e-4", "reinforce-plus-plus", "async", 4, 4e-4),
                                          ("sync-lr2e-3", "rloo", "sync", 3, 2e-3)):
        ranks = 1 if mode == "async" else 2
        topology = rl_topology(root, arith, recipe, mode=mode, steps=steps, evaluator_role=True, name=name)
        overrides = ["--set", f"roles.trainer.config.optim.lr={lr}", "--set", "roles.controller.config.eval.every_steps=2",
                     "--set", f"roles.trainer.count={ranks}",
                     "--set", "roles.controller.config.checkpoint_every=1",
                     # an entropy bonus moves the weights even when every reward of the tiny model is 0
                     "--set", "roles.trainer.config.entropy_coef=0.05",
                     "--set", f"roles.evaluator.config.evaluators=[{json.dumps({**GREEDY, 'args': {**GREEDY['args'], 'data': str(arith / 'heldout.jsonl')}})}]"]
        if ranks > 1:  # each rank cuts its rows by the budget and runs as many micro-batches as the one with most
            overrides += ["--set", "roles.trainer.config.update.max_tokens_per_micro_batch=20"]
        run_dir = root / name
        if mode == "async":
            result = troupe("launch", str(topology), "--run-dir", str(run_dir), "--no-status", *overrides, timeout=540)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        else:  # held up after its last step by a Python API client, for an evaluation on demand
            held = Run.from_topology(topology, overrides[1::2], run_dir=run_dir)
            try:
                assert len(list(held.follow(hold=True))) == steps  # the roles stay up until release()
                on_demand = troupe("eval", str(run_dir), "--now", timeout=300)
                assert on_demand.returncode == 0, on_demand.stdout + on_demand.stderr
                assert "eval/accuracy:" in on_demand.stdout and "step 3:" in on_demand.stdout
                held.release()
                assert held.wait(timeout=120) == "finished"
            finally:
                held.stop()
        runs[name] = run_dir
    return runs


def test_the_evaluator_role_evaluates_in_its_own_process_with_every_number(lr_runs: dict[str, Path]) -> None:
    run_dir = lr_runs["async-lr4e-4"]
    check_step_records(run_dir, 4, "async", eval_steps=[0, 2, 4])
    assert len(handled(run_dir, "evaluator-", "rl.evaluate")) == 3
    assert not handled(run_dir, "controller-", "rl.generate")  # the controller asked, the evaluator generated
    evaluations = [r for r in metrics(run_dir) if r.get("source") == "evaluator"]
    for record in evaluations:  # the custom evaluator, by import path, after the built-in one
        assert 0.0 <= record["eval/greedy/accuracy"] <= 1.0
        # training goes on while the evaluator works: its later calls may meet newer weights
        assert record["eval/greedy/weights_version"] >= record["eval/weights_version_max"]
        dump = [json.loads(line) for line in (run_dir / "eval" / f"step_{record['step']}.jsonl").read_text().splitlines()]
        assert set(dump[0]) == {"prompt", "response", "extracted", "ground_truth", "score", "terms", "weights_version"}
        assert {d["weights_version"] for d in dump} <= {record["eval/weights_version_min"], record["eval/weights_version_max"]}
    assert evaluations[-1]["eval/weights_version_min"] >= 3  # the last evaluation saw trained weights


@pytest.mark.parametrize(("name", "recipe"), [("async-lr4e-4", "reinforce-plus-plus"), ("sync-lr2e-3", "rloo")])
def test_the_rloo_and_reinforce_plus_plus_recipes_train_with_the_kl_in_the_reward(
        lr_runs: dict[str, Path], name: str, recipe: str) -> None:
    run_dir = lr_runs[name]
    advantage = RunDir(run_dir).role_config("controller")["advantage"]["type"]
    assert advantage == {"rloo": "rloo", "reinforce-plus-plus": "reinforce_plus_plus"}[recipe]
    for record in (r for r in metrics(run_dir) if "train/reward" in r):
        assert math.isfinite(record["train/loss"]) and math.isfinite(record["train/grad_norm"])
        assert record["train/kl_coef"] == pytest.approx(0.001) and "timing/reference_s" in record  # the fixed k1 penalty


def test_tensorboard_has_histograms_sample_text_and_hyperparameters_and_evaluation_on_demand(lr_runs: dict[str, Path]) -> None:
    run_dir = lr_runs["sync-lr2e-3"]
    on_demand = [r for r in metrics(run_dir) if r.get("source") == "evaluator" and r["step"] == 3]
    assert len(on_demand) == 2  # the scheduled last evaluation and `troupe eval --now`
    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    tags = tb.Tags()
    assert {"hist/reward", "hist/response_length", "hist/advantages"} <= set(tags["histograms"])
    assert {"train/reward", "train/kl_k3_seq", "eval/accuracy", "final/train/reward", "final/eval/accuracy"} <= set(tags["scalars"])
    assert any(tag.startswith("eval/samples") for tag in tags["tensors"])  # the text tab's entries
    hparams = tb.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and b"trainer.optim.lr" in hparams["_hparams_/experiment"]


def test_two_fsdp_trainer_ranks_train_and_publish_together(lr_runs: dict[str, Path]) -> None:
    run_dir = lr_runs["sync-lr2e-3"]
    steps = [r for r in metrics(run_dir) if "train/reward" in r]
    assert [r["weights/version"] for r in steps] == [1, 2, 3]
    assert all(r["weights/generators"] == 1 for r in steps)
    for rank in (0, 1):  # every rank took part in every update and every gather
        assert len(handled(run_dir, f"trainer-{rank}", "rl.train")) == 3
        assert len(handled(run_dir, f"trainer-{rank}", "weights.publish")) == 3
    assert (run_dir / "checkpoints" / "step_3" / "trainer" / ".metadata").exists()


def test_report_on_a_run(lr_runs: dict[str, Path]) -> None:
    run_dir = lr_runs["async-lr4e-4"]
    result = troupe("report", str(run_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    plots = sorted((run_dir / "report").glob("*.png"))
    assert {p.name for p in plots} >= {"reward.png", "kl.png", "entropy.png", "accuracy.png", "diversity.png"}
    assert all(p.stat().st_size > 5000 for p in plots)
    page = (run_dir / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots) and "Health alerts" in page
    assert f"{len(plots)} plots and {run_dir / 'report' / 'index.html'}" in result.stdout


def test_compare_two_runs_with_different_learning_rates(lr_runs: dict[str, Path], tmp_path: Path) -> None:
    runs = [str(path) for path in lr_runs.values()]
    result = troupe("compare", *runs, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    header, _, first, second = result.stdout.splitlines()[:4]
    assert "trainer.optim.lr" in header and "controller.mode" in header and "final accuracy [95% CI]" in header
    assert first.startswith("| async-lr4e-4 |") and "| 0.0004 |" in first and "| 0.002 |" in second
    heldout = len((Path(runs[0]) / "eval" / "step_0.jsonl").read_text().splitlines()) // 2  # 2 samples per prompt
    assert "| sync-lr2e-3 - async-lr4e-4 |" in result.stdout and f"| {heldout} |" in result.stdout
    for style in ("csv", "html"):
        out = tmp_path / f"table.{style}"
        assert troupe("compare", *runs, "--format", style, "--out", str(out)).returncode == 0
        assert "async-lr4e-4" in out.read_text()


def test_an_exported_checkpoint_gives_the_logits_of_the_trainers_model_at_that_step(
        tmp_path: Path, lr_runs: dict[str, Path], arith: Path) -> None:  # noqa: F811
    run_dir = lr_runs["sync-lr2e-3"]  # two FSDP trainer ranks, a checkpoint after every step
    assert len(list((run_dir / "checkpoints" / "step_1" / "trainer").glob("*.distcp"))) == 2  # one shard per rank

    exported = troupe("export", str(run_dir), str(tmp_path / "step1"), "--step", "1")
    assert exported.returncode == 0, exported.stderr
    assert f"exported {run_dir} (step_1) to {tmp_path / 'step1'}" in exported.stdout
    newest = export_checkpoint(run_dir, tmp_path / "newest")  # what Run.export calls

    initial = AutoModelForCausalLM.from_pretrained(arith / "model", local_files_only=True).eval()
    seen = []
    for step, out in ((1, tmp_path / "step1"), (3, newest)):
        for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
            assert (out / name).is_file(), name
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
        assert tokenizer.chat_template == AutoTokenizer.from_pretrained(arith / "model").chat_template
        batch = dict(tokenizer(PROMPTS, padding=True, return_tensors="pt"))
        exported_logits = logits_of(AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval(), batch)
        trainer_logits = logits_of(trainer_model_at(run_dir / "checkpoints" / f"step_{step}", arith / "model",
                                                    tmp_path), batch)
        torch.testing.assert_close(exported_logits, trainer_logits, rtol=0, atol=0)
        assert not torch.allclose(exported_logits, logits_of(initial, batch)), f"step {step} exported the initial model"
        meta = json.loads((out / "troupe_export.json").read_text())
        assert meta["checkpoint"] == f"step_{step}" and meta["weights_version"] == step
        seen.append(exported_logits)
    assert not torch.allclose(seen[0], seen[1]), "steps 1 and 3 exported the same weights"


def test_troupe_eval_scores_a_runs_checkpoint_and_a_model_directory(lr_runs: dict[str, Path], arith: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    heldout = arith / "heldout.jsonl"
    rows = len(heldout.read_text().splitlines())
    run = troupe("eval", str(lr_runs["sync-lr2e-3"]), "--data", str(heldout), "--n", "2", "--max-new-tokens", "4",
                 "--step", "1", "--out", str(tmp_path / "run-eval"), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pass@2" in run.stdout and "maj@2" in run.stdout and "sync-lr2e-3/step_1" in run.stdout
    summary = json.loads((tmp_path / "run-eval" / "summary.json").read_text())
    assert summary["weights_version"] == 1 and summary["step"] == 1  # the run's own reward settings scored it
    assert summary["metrics"]["eval/prompts"] == rows and summary["metrics"]["eval/samples"] == 2 * rows
    samples = [json.loads(line) for line in (tmp_path / "run-eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * rows and {s["weights_version"] for s in samples} == {1}
    assert summary["metrics"]["eval/accuracy"] == pytest.approx(sum(s["score"] >= 1.0 for s in samples) / len(samples))

    model = troupe("eval", str(arith / "model"), "--data", str(heldout), "--temperature", "0", "--reward", "arithmetic",
                   "--max-new-tokens", "4", "--out", str(tmp_path / "model-eval"), timeout=300)
    assert model.returncode == 0, model.stdout + model.stderr
    assert json.loads((tmp_path / "model-eval" / "summary.json").read_text())["weights_version"] == -1
    unscored = troupe("eval", str(arith / "model"), "--data", str(heldout), timeout=300)
    assert unscored.returncode == 2 and "say how to score the responses: --reward" in unscored.stdout
