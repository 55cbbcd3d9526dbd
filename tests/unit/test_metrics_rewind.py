"""A resumed run's numbers: what the crashed session wrote after the checkpoint is
dropped from metrics.jsonl and from TensorBoard, so every reader sees one row per step."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from launch.runs import read_tensorboard
from roles.metrics import MetricsLog, read_metrics, rewind_metrics, scheduled_evaluation_steps


def train_row(step: int, session: int) -> dict[str, float]:
    return {"train/reward": float(step) + session / 10, "weights/version": float(step)}


def test_rewinding_to_the_checkpoint_step_keeps_every_row_up_to_it_and_drops_the_rest(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write(0, {"eval/accuracy": 0.1})
    for step in range(1, 6):
        log.write(step, train_row(step, 1))
        if step % 2 == 0:
            log.write(step, {"eval/accuracy": step / 10}, source="evaluator")
    with open(tmp_path / "metrics.jsonl", "a") as out:
        out.write('{"step": 5, "train/rew')  # the crash cut the last line
    kept = rewind_metrics(tmp_path, 3)
    assert [(r["step"], "train/reward" in r) for r in kept] == [(0, False), (1, True), (2, True), (2, False), (3, True)]
    assert read_metrics(tmp_path) == kept
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")
    log.write(4, train_row(4, 2))  # the resumed session appends after the kept rows
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 2, 3, 4]


def test_the_evaluation_of_the_checkpoint_step_is_known_so_it_is_not_done_twice(tmp_path: Path) -> None:
    records = [{"step": 0, "eval/accuracy": 0.1}, {"step": 2, **train_row(2, 1)},
               {"step": 2, "source": "evaluator", "eval/accuracy": 0.3},
               {"step": 3, "source": "python-evaluators", "eval/mine": 1.0}]  # not the controller's schedule
    assert scheduled_evaluation_steps(records) == {0, 2}


def test_rewinding_a_run_without_metrics_changes_nothing(tmp_path: Path) -> None:
    assert rewind_metrics(tmp_path, 3) == []
    assert not (tmp_path / "metrics.jsonl").exists()


def scalar_steps(tb_dir: Path) -> dict[str, list[int]]:
    """Every scalar point TensorBoard's own loader keeps, per tag (duplicates included)."""
    accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}


def test_tensorboard_shows_one_point_per_step_after_a_resume_and_keeps_the_evaluators_new_points(tmp_path: Path) -> None:
    # the first session: the controller trains steps 1..5, the evaluator role evaluates steps 2 and 4
    controller, evaluator = MetricsLog(tmp_path), MetricsLog(tmp_path)
    for step in range(1, 6):
        controller.write(step, train_row(step, 1))
        if step % 2 == 0:
            evaluator.write(step, {"eval/accuracy": step / 10}, source="evaluator")
    controller.close()
    evaluator.close()  # (killed: the files simply stop)
    # the relaunch: the evaluator role starts (its event file opens) before the controller resumes from step 3
    evaluator = MetricsLog(tmp_path)
    rewind_metrics(tmp_path, 3)
    controller = MetricsLog(tmp_path)
    for step in range(4, 7):
        controller.write(step, train_row(step, 2))
        if step % 2 == 0:
            evaluator.write(step, {"eval/accuracy": step / 10 + 0.05}, source="evaluator")
    controller.close()
    evaluator.close()

    points = scalar_steps(tmp_path / "tb")
    assert points["train/reward"] == [1, 2, 3, 4, 5, 6]
    assert points["weights/version"] == [1, 2, 3, 4, 5, 6]
    assert sorted(points["eval/accuracy"]) == [2, 4, 6]
    series, _ = read_tensorboard(tmp_path / "tb")  # what `troupe report` and `troupe compare` read
    assert series["train/reward"].values == pytest.approx([1.1, 2.1, 3.1, 4.2, 5.2, 6.2])  # float32 in the event files
    assert series["eval/accuracy"].values == pytest.approx([0.2, 0.45, 0.65])
    assert Counter(r["step"] for r in read_metrics(tmp_path) if "train/reward" in r) == {s: 1 for s in range(1, 7)}


def test_rewinding_tensorboard_leaves_event_files_without_later_steps_untouched(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.write(1, train_row(1, 1))
    log.close()
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "tb").iterdir()}
    rewind_metrics(tmp_path, 3)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "tb").iterdir()} == before
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 1
