"""RL runs end to end through `troupe launch`: every role its own process, on a tiny
model and dataset built by the example's own build code (quick mode)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.arith.build import build
from roles.metrics import read_metrics
from tests.e2e.cli import ps, run_state, troupe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
STEP_NAMES = {
    "train/reward", "train/reward_std", "train/kl_div", "train/kl_coef", "train/loss", "train/entropy",
    "train/pg_clipfrac", "train/ppo_kl", "train/grad_norm", "train/response_length", "timing/generate_s",
    "timing/reward_s", "timing/reference_s", "timing/train_s", "timing/publish_s", "timing/step_s",
    "perf/tokens_per_s", "weights/version", "weights/sync_s", "train/kl_k1_token", "train/kl_k1_seq", "train/kl_k3_token",
    "train/kl_k3_seq", "train/zero_variance_groups",
}
EVAL_NAMES = {
    "eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high", "eval/reward", "eval/reward_std", "eval/pass@1",
    "eval/pass@2", "eval/maj@2", "eval/mean@2", "eval/distinct_2_tokens_within", "eval/distinct_2_words_across",
    "eval/ngram_entropy_4_tokens_across", "eval/seq_rep_2_tokens", "eval/self_bleu_words_within",
    "eval/self_bleu_tokens_across", "eval/self_bleu_tokens_across_samples", "eval/compression_ratio_across",
    "timing/eval_s",
}


@pytest.fixture(scope="module")
def arith(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arith")
    build(out, seed=0, quick=True)
    return out


def rl_topology(tmp_path: Path, data: Path, algorithm: str = "grpo", mode: str = "sync", steps: int = 3,
                evaluator_role: bool = False, name: str | None = None, source: str | None = None,
                **controller: Any) -> Path:
    """The recipe's topology (``examples/recipes/<algorithm>.yaml``, the same settings as
    ``examples/arith-<algorithm>.yaml``, or the file `source` names) on the tiny model and
    data; evaluation in the evaluator role (`evaluator_role`) or, without that role, in
    the controller."""
    topology = yaml.safe_load((REPO / (source or f"examples/recipes/{algorithm}.yaml")).read_text())
    topology["runtime"] = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0}
    roles = topology["roles"]
    for role in roles.values():
        config = role.get("config", {})
        if "model" in config:
            config["model"] = str(data / "model")
    heldout = {"data": {"files": [str(data / "heldout.jsonl")], "shuffle": False}, "sampling": {"n": 2, "max_new_tokens": 4}}
    if evaluator_role:
        roles["evaluator"]["config"].update(tokenizer=str(data / "model"), **heldout)
        evaluation: dict[str, Any] = {"evaluator": True}
    else:
        roles.pop("evaluator", None)
        evaluation = heldout
    control = roles["controller"]["config"]
    control.update({
        "tokenizer": str(data / "model"), "steps": steps, "prompts_per_step": 4, "mode": mode,
        "data": {"files": [str(data / "train.jsonl")], "seed": 0},
        "sampling": {"n": 4, "temperature": 1.0, "max_new_tokens": 4},
        "eval": evaluation,
        **controller,
    })
    path = tmp_path / f"{name or algorithm + '-' + mode}.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def message_kinds_by_trace(run_dir: Path) -> dict[str, Counter[str]]:
    traces: dict[str, Counter[str]] = {}
    for path in (run_dir / "logs").glob("controller-*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "send" and event.get("trace_id"):
                traces.setdefault(event["trace_id"], Counter())[event.get("kind", "")] += 1
    return traces


def check_step_records(run_dir: Path, steps: int, mode: str, eval_steps: list[int] | None = None) -> None:
    """metrics.jsonl has every step with every name, versions advance, evaluations
    before and after, a checkpoint, TensorBoard files, and one trace per batch."""
    records = metrics(run_dir)
    trained = [r for r in records if "train/reward" in r]
    assert [r["step"] for r in trained] == list(range(1, steps + 1))
    for record in trained:
        assert STEP_NAMES <= record.keys(), STEP_NAMES - record.keys()
        if mode == "async":
            assert "train/staleness" in record
    assert [r["weights/version"] for r in trained] == list(range(1, steps + 1))
    evaluations = [r for r in records if "eval/accuracy" in r and r.get("source") in (None, "evaluator")]
    assert sorted(r["step"] for r in evaluations) == (eval_steps or [0, steps])
    for record in evaluations:
        assert EVAL_NAMES <= record.keys(), EVAL_NAMES - record.keys()
        samples = (run_dir / "eval" / f"step_{record['step']}.jsonl").read_text().splitlines()
        assert len(samples) == record["eval/samples"]
    assert (run_dir / "checkpoints" / f"step_{steps}" / "controller.json").exists()
    assert any((run_dir / "tb").iterdir())
    # one trace per batch: each step's generate, score, log-prob and train messages share a trace
    batches = [kinds for kinds in message_kinds_by_trace(run_dir).values() if kinds["rl.train"]]
    assert len(batches) == steps
    for kinds in batches:
        assert kinds["rl.generate"] >= 1 and kinds["rl.score"] >= 1 and kinds["rl.logprobs"] >= 1 and kinds["rl.train"] == 1


def handled(run_dir: Path, instance_prefix: str, kind: str) -> list[str]:
    """Message ids of `kind` handled by instances whose name starts with the prefix."""
    ids = []
    for path in (run_dir / "logs").glob(f"{instance_prefix}*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "handled" and event.get("kind") == kind:
                ids.append(event["message_id"])
    return ids


def trained_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [r["step"] for r in metrics(run_dir) if "train/reward" in r] if path.exists() else []


def test_killed_generator_and_reward_restart_an_attached_generator_joins_and_no_batch_is_trained_twice(
    tmp_path: Path, run_dir: Path, arith: Path,
) -> None:
    steps = 80
    topology = rl_topology(tmp_path, arith, steps=steps, prompts_per_step=32, sampling={"n": 8, "temperature": 1.0, "max_new_tokens": 6})
    assert troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach", timeout=300).returncode == 0
    try:
        pids = {name: row["pid"] for name, row in ps(run_dir).items()}
        wait_for(lambda: len(trained_steps(run_dir)) >= 2, 120, "two steps")
        for victim in ("generator-0", "reward-0"):  # both at once, mid-run
            os.kill(pids[victim], signal.SIGKILL)
        assert len(trained_steps(run_dir)) < steps, "the run ended before the faults: make it longer"
        attached = troupe("attach", str(run_dir), "generator", timeout=120)
        assert attached.returncode == 0, attached.stdout + attached.stderr
        log = run_dir / "logs" / "generator-1.jsonl"
        wait_for(lambda: log.exists() and '"rl.generate"' in log.read_text(), 120, "generator-1 to get work")
        wait_for(lambda: run_state(run_dir) in ("finished", "failed"), 400, "the run to end")
    finally:
        troupe("stop", str(run_dir))
    launcher_log = (run_dir / "launcher.log").read_text()
    for victim in ("generator-0", "reward-0"):
        assert f"{victim} exited with code" in launcher_log, launcher_log[-2000:]
    assert run_state(run_dir) == "finished"
    assert trained_steps(run_dir) == list(range(1, steps + 1))
    train_ids = handled(run_dir, "trainer-", "rl.train")
    assert len(train_ids) == steps and len(set(train_ids)) == steps  # every batch trained exactly once
    # the attached generator held trained weights before it generated, and its rollouts reached training
    events = [json.loads(line) for line in log.read_text().splitlines()]
    loaded = [e for e in events if e.get("event") == "weights.loaded"]
    first_generate = next(i for i, e in enumerate(events) if e.get("event") == "handled" and e.get("kind") == "rl.generate")
    assert loaded and events.index(loaded[0]) < first_generate and loaded[0]["version"] >= 2
    controller = [json.loads(line) for line in (run_dir / "logs" / "controller-0.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "receive" and e.get("kind") == "rl.rollouts" and e.get("peer") == "generator-1" for e in controller)


def newest_checkpoint(run_dir: Path) -> int:
    """The newest step whose checkpoint has its completion marker (0: none)."""
    return max((int(path.parent.name.removeprefix("step_")) for path in (run_dir / "checkpoints").glob("step_*/controller.json")),
               default=0)


def scalar_steps(tb_dir: Path) -> dict[str, list[int]]:
    """Every scalar point TensorBoard's own loader keeps, per tag (duplicates included)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}


def test_a_killed_ppo_run_resumes_in_async_mode_with_one_row_per_step_and_the_versions_of_an_uninterrupted_run(
    tmp_path: Path, run_dir: Path, arith: Path,
) -> None:
    steps, every = 100, 10  # a step takes ~0.1 s here: enough of them that the kill lands mid-run
    topology = rl_topology(tmp_path, arith, algorithm="ppo", steps=steps, checkpoint_every=every,
                           kl={"usage": "reward", "estimator": "k1", "kl_controller": {"type": "adaptive", "kl_coef": 0.01, "target_kl": 0.001, "horizon": 10}})
    evaluate_every = ["--set", "roles.controller.config.eval.every_steps=25"]
    first = troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach", *evaluate_every, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    try:
        controller_pid = int(wait_for(lambda: re.search(r"controller-0 running \(pid (\d+)\)", (run_dir / "launcher.log").read_text()),
                                      30, "the controller's pid").group(1))  # (`troupe ps` takes longer than a few steps)

        def trained_after_a_checkpoint() -> bool:
            trained = [r["step"] for r in read_metrics(run_dir) if "train/reward" in r]  # (a line being written is skipped)
            return 0 < newest_checkpoint(run_dir) < max(trained, default=0)

        wait_for(trained_after_a_checkpoint, 300, "a step trained after a checkpoint")
        os.kill(controller_pid, signal.SIGKILL)
        wait_for(lambda: run_state(run_dir) in ("finished", "failed"), 120, "the run to end")
    finally:
        troupe("stop", str(run_dir))
    resume_step = newest_checkpoint(run_dir)
    assert resume_step < steps, "the run ended before the kill: make it longer"
    assert max(r["step"] for r in read_metrics(run_dir)) > resume_step  # rows the resume must drop
    saved = json.loads((run_dir / "checkpoints" / f"step_{resume_step}" / "controller.json").read_text())
    trainer_meta = json.loads((run_dir / "checkpoints" / f"step_{resume_step}" / "trainer_meta.json").read_text())
    assert (run_dir / "checkpoints" / f"step_{resume_step}" / "critic.pt").exists()
    # a newer checkpoint whose marker was cut short (a torn write, or an older troupe)
    damaged = run_dir / "checkpoints" / f"step_{resume_step + every}"
    damaged.mkdir(exist_ok=True)
    (damaged / "controller.json").write_text("")

    # relaunched with the same run directory, in async mode: PPO with generation running ahead
    second = troupe("launch", str(topology), "--run-dir", str(run_dir), "--no-status", *evaluate_every,
                    "--set", "roles.controller.config.mode=async", timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    records = read_metrics(run_dir)
    trained = [r for r in records if "train/reward" in r]
    assert [r["step"] for r in trained] == list(range(1, steps + 1))  # one row per step
    # the version sequence of an uninterrupted run: version n after step n (check_step_records' rule for clean runs)
    assert [r["weights/version"] for r in trained] == list(range(1, steps + 1))
    assert sorted(r["step"] for r in records if "eval/accuracy" in r) == [0, 25, 50, 75, 100]  # each evaluation once
    points = scalar_steps(run_dir / "tb")  # TensorBoard shows the same: one point per step
    assert points["train/reward"] == list(range(1, steps + 1)) and points["weights/version"] == list(range(1, steps + 1))
    assert sorted(points["eval/accuracy"]) == [0, 25, 50, 75, 100]

    events = [json.loads(line) for line in (run_dir / "logs" / "controller-0.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e.get("event") == "controller.checkpoint_skipped"]
    assert skipped and skipped[-1]["checkpoint"] == str(damaged) and "controller.json is empty" in skipped[-1]["problem"]
    assert f"{damaged}: controller.json is empty" in (run_dir / "logs" / "controller-0.stderr").read_text()  # said visibly
    resumed = [e for e in events if e.get("event") == "controller.resumed"]
    assert resumed and resumed[-1]["step"] == resume_step and resumed[-1]["version"] == trainer_meta["version"] == resume_step
    by_step = {r["step"]: r for r in trained}
    for record in trained:  # PPO: the critic's numbers too
        assert STEP_NAMES | {"train/value_loss", "timing/values_s", "timing/train_critic_s"} <= record.keys()
        assert ("train/staleness" in record) == (record["step"] > resume_step)  # async after the resume only
    assert by_step[resume_step + 1]["train/kl_coef"] == pytest.approx(saved["kl_controller"]["kl_coef"])  # the KL coefficient continued
    final = json.loads((run_dir / "checkpoints" / f"step_{steps}" / "trainer_meta.json").read_text())
    assert final["optimizer_steps"] == trainer_meta["optimizer_steps"] // resume_step * steps  # the optimizer state went on
    sampler = json.loads((run_dir / "checkpoints" / f"step_{steps}" / "controller.json").read_text())["sampler"]
    drawn = sampler["epoch"] * sampler["size"] + sampler["position"]
    assert drawn == saved["sampler"]["epoch"] * saved["sampler"]["size"] + saved["sampler"]["position"] + (steps - resume_step) * 4
    assert json.loads((damaged / "controller.json").read_text())["step"] == resume_step + every  # saved again, whole
