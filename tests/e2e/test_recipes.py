"""The recipe files of examples/recipes/ train end to end through `troupe launch` on the
tiny arithmetic model: every role its own process, two steps each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from roles.metrics import read_metrics
from tests.e2e.cli import troupe
from tests.e2e.test_rl_run import STEP_NAMES, arith, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS_PER_STEP = 4


def trained_records(tmp_path: Path, data: Path, recipe: str, run_dir: Path) -> list[dict]:
    topology = rl_topology(tmp_path, data, steps=2, name=recipe, source=f"examples/recipes/{recipe}.yaml")
    launched = troupe("launch", str(topology), "--run-dir", str(run_dir), "--no-status", timeout=420)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    return [record for record in read_metrics(run_dir) if "train/reward" in record]


@pytest.mark.parametrize("recipe", ["gspo", "cispo"])
def test_a_policy_loss_recipe_trains_with_finite_losses_and_every_step_metric(
        recipe: str, arith: Path, tmp_path: Path, run_dir: Path) -> None:  # noqa: F811 - arith is a fixture
    records = trained_records(tmp_path, arith, recipe, run_dir)
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        assert STEP_NAMES - {"train/kl_div", "train/kl_k1_token", "train/kl_k1_seq", "train/kl_k3_token",
                             "train/kl_k3_seq", "timing/reference_s"} <= record.keys()
        assert math.isfinite(record["train/loss"]) and 0.0 <= record["train/pg_clipfrac"] <= 1.0


def test_the_dapo_recipe_trains_on_informative_groups_with_bounded_extra_generation(
        arith: Path, tmp_path: Path, run_dir: Path) -> None:  # noqa: F811 - arith is a fixture
    records = trained_records(tmp_path, arith, "dapo", run_dir)
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        assert 1 <= record["train/dynamic_sampling_rounds"] <= 4  # the recipe's max_rounds
        assert record["train/groups_drawn"] >= record["train/groups_kept"]
        if record["train/groups_kept"] == PROMPTS_PER_STEP:  # a full step: no group without signal in it
            assert record["train/zero_variance_groups"] == 0.0
        assert "train/overlong_penalty_mean" in record and record["train/overlong_penalty_mean"] <= 0.0
