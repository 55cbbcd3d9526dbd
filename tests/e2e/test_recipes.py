"""The recipe files of examples/recipes/ train end to end through `troupe launch` on the
tiny arithmetic model: every role its own process, two steps each. Where another test
launches the same topology the recipe runs there, not again here: grpo and ppo in
tests/e2e/test_rl_run.py (`rl_topology` reads the recipe files), rloo and
reinforce-plus-plus in tests/e2e/test_evaluation_runs.py (its two runs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from roles.metrics import read_metrics
from runtime.run_dir import RunDir
from tests.e2e.cli import troupe
from tests.e2e.test_rl_run import STEP_NAMES, arith, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS_PER_STEP = 4
KL_NAMES = {"train/kl_div", "train/kl_k1_token", "train/kl_k1_seq", "train/kl_k3_token", "train/kl_k3_seq"}
MISMATCH_MEANS = {"train/rollout_kl_k1_token", "train/rollout_kl_k1_seq", "train/rollout_kl_k3_token",
                  "train/rollout_kl_k3_seq", "train/rollout_ratio_mean"}
MISMATCH_EXTREMES = {"train/rollout_ratio_min", "train/rollout_ratio_max", "train/rollout_ratio_p05",
                     "train/rollout_ratio_p50", "train/rollout_ratio_p95"}


def trained_records(tmp_path: Path, data: Path, recipe: str, run_dir: Path, **controller: Any) -> list[dict]:
    topology = rl_topology(tmp_path, data, steps=2, name=recipe, source=f"examples/recipes/{recipe}.yaml", **controller)
    launched = troupe("launch", str(topology), "--run-dir", str(run_dir), "--no-status", timeout=420)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    records = [record for record in read_metrics(run_dir) if "train/reward" in record]
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["train/loss"]) and math.isfinite(record["train/grad_norm"])
    return records


@pytest.mark.parametrize(("recipe", "settings", "share", "mismatch"), [
    # old log-probs recomputed before the update: the mismatch is measured on the whole batch, extremes included
    ("gspo", {"rollout_correction": {"type": "truncate", "level": "sequence", "upper": 2.0}, "recompute_logprobs": "always"},
     "train/rollout_truncated_share", MISMATCH_MEANS | MISMATCH_EXTREMES),
    # one optimizer step (16 rows, mini-batches of 64): the update's own log-probs, the means per micro-batch
    ("cispo", {"rollout_correction": {"type": "mask", "level": "token", "lower": 0.5, "upper": 2.0}},
     "train/rollout_masked_share", MISMATCH_MEANS),
])
def test_a_policy_loss_recipe_trains_with_a_rollout_correction_and_every_step_and_mismatch_metric(
        recipe: str, settings: dict[str, Any], share: str, mismatch: set[str], arith: Path, tmp_path: Path,  # noqa: F811
        run_dir: Path) -> None:
    records = trained_records(tmp_path, arith, recipe, run_dir, **settings)
    for record in records:
        assert (STEP_NAMES - KL_NAMES - {"timing/reference_s"}) | mismatch | {share} <= record.keys()
        assert 0.0 <= record["train/pg_clipfrac"] <= 1.0 and 0.0 <= record[share] <= 1.0
        # the generator and the trainer run the same float32 model here: the ratio is 1 up to rounding
        assert record["train/rollout_ratio_mean"] == pytest.approx(1.0, abs=1e-3)
        assert abs(record["train/rollout_kl_k1_token"]) < 1e-3
        if "train/rollout_ratio_max" in mismatch:
            assert record["train/rollout_ratio_min"] <= record["train/rollout_ratio_p50"] <= record["train/rollout_ratio_max"]


def test_the_dr_grpo_recipe_trains_with_unnormalised_advantages_and_no_kl_term(
        arith: Path, tmp_path: Path, run_dir: Path) -> None:  # noqa: F811 - arith is a fixture
    records = trained_records(tmp_path, arith, "dr-grpo", run_dir)
    config = RunDir(run_dir).role_config("controller")
    assert config["advantage"]["type"] == "drgrpo" and config["kl"]["usage"] == "none"
    assert RunDir(run_dir).role_config("trainer")["policy_loss"]["loss_agg_mode"] == "seq-mean-token-sum-norm"
    for record in records:
        assert STEP_NAMES <= record.keys()  # the KL to the reference is still measured, as a number only
        assert record.get("train/kl_loss", 0.0) == 0.0  # kl.usage none: no KL term in the loss


def test_the_dapo_recipe_trains_on_informative_groups_with_bounded_extra_generation(
        arith: Path, tmp_path: Path, run_dir: Path) -> None:  # noqa: F811 - arith is a fixture
    records = trained_records(tmp_path, arith, "dapo", run_dir)
    for record in records:
        assert 1 <= record["train/dynamic_sampling_rounds"] <= 4  # the recipe's max_rounds
        assert record["train/groups_drawn"] >= record["train/groups_kept"]
        if record["train/groups_kept"] == PROMPTS_PER_STEP:  # a full step: no group without signal in it
            assert record["train/zero_variance_groups"] == 0.0
        assert "train/overlong_penalty_mean" in record and record["train/overlong_penalty_mean"] <= 0.0
