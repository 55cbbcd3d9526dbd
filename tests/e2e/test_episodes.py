"""A multi-turn run through `troupe launch` on the tiny arithmetic model: every sample is
an episode the generator plays with the environment role (a second try after a wrong
answer), scored by the environment, trained as one token sequence per episode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from roles.metrics import read_metrics
from tests.e2e.cli import troupe
from tests.e2e.test_rl_run import arith, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_multi_turn_run_trains_on_episodes_scored_by_the_environment(arith: Path, tmp_path: Path,  # noqa: F811
                                                                      run_dir: Path) -> None:
    episodes = {"limits": {"max_turns": 2, "max_total_tokens": 48, "max_new_tokens_per_turn": 6}, "reward": "last",
                "call_timeout_s": 30}
    path = rl_topology(tmp_path, arith, steps=2, name="episodes", use_reference=False, kl={"usage": "none"},
                       episodes=episodes)
    topology = yaml.safe_load(path.read_text())
    topology["roles"].pop("reference")
    topology["roles"].pop("reward")  # episodes and held-out episodes are scored by the environment
    topology["roles"]["controller"]["config"]["eval"]["episodes"] = episodes
    topology["roles"]["environment"] = {"entry": "environment", "count": 2,
                                        "config": {"environment": "tests.e2e.episodes:SecondTry", "step_timeout_s": 10}}
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    launched = troupe("launch", str(path), "--run-dir", str(run_dir), "--no-status", timeout=420)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    records = [record for record in read_metrics(run_dir) if "train/reward" in record]
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["train/loss"]) and 0.0 <= record["train/reward"] <= 1.0
        assert 1.0 <= record["train/episode_turns"] <= 2.0
        ends = sum(value for name, value in record.items() if name.startswith("train/episode_end_"))
        assert ends == pytest.approx(1.0)
    assert any(record["train/episode_turns"] > 1.0 for record in records), "no wrong first answer got a second try"
    evaluations = [record for record in read_metrics(run_dir) if "eval/accuracy" in record]
    assert [record["step"] for record in evaluations] == [0, 2]  # held-out episodes before and after
    for record in evaluations:
        assert 0.0 <= record["eval/accuracy"] <= 1.0 and 1.0 <= record["eval/episode_turns"] <= 2.0
