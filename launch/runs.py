"""A run's numbers as `troupe report` and `troupe compare` read them.

Metric series come from ``metrics.jsonl`` or, for runs that only have TensorBoard event
files (or on request), from ``tb/`` — every point, with no sampling cap. The run's
settings come from its resolved ``topology.yaml``; its evaluated samples from
``eval/step_N.jsonl``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from roles.evaluation.trends import Series, series_from_records
from roles.metrics import read_metrics, run_hyperparameters
from runtime.run_dir import RunDir

Source = Literal["auto", "jsonl", "tb"]


class RunDataError(RuntimeError):
    """A folder that is not a run, or a run without the numbers asked for."""


@dataclass
class RunData:
    """What report and compare know of one run."""

    path: Path
    series: dict[str, Series]
    hyperparameters: dict[str, Any]
    wall_s: float | None
    """From the run's start (registry.json) to its last metric, or the first to the last
    TensorBoard event; None when unknown."""
    source: str
    eval_steps: list[int] = field(default_factory=list)
    """Steps with a sample dump in ``eval/``."""

    @property
    def name(self) -> str:
        return self.path.name

    def values(self, name: str) -> list[float]:
        found = self.series.get(name)
        return [value for value in found.values if math.isfinite(value)] if found else []

    def last(self, name: str) -> float | None:
        values = self.values(name)
        return values[-1] if values else None

    def eval_samples(self, step: int) -> list[dict[str, Any]]:
        path = RunDir(self.path).eval_samples(step)
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def correct_at(self) -> float:
        """The score at which the run's evaluation counted a sample correct."""
        for key in ("evaluator.correct_at", "controller.eval.correct_at"):
            if isinstance(self.hyperparameters.get(key), (int, float)):
                return float(self.hyperparameters[key])
        return 1.0


def load_run(path: Path | str, source: Source = "auto") -> RunData:
    """Read a run directory (metrics.jsonl first under ``auto``)."""
    run_dir, files = Path(path), RunDir(path)
    if not run_dir.is_dir():
        raise RunDataError(f"{run_dir} is not a directory")
    has_jsonl, has_tb = files.metrics.exists(), files.tensorboard.is_dir()
    if source == "jsonl" or (source == "auto" and has_jsonl):
        if not has_jsonl:
            raise RunDataError(f"{run_dir} has no metrics.jsonl")
        series, wall_s, used = series_from_records(read_metrics(run_dir)), _jsonl_wall_s(run_dir), "metrics.jsonl"
    elif has_tb:
        series, wall_s = read_tensorboard(files.tensorboard)
        used = "tb"
    else:
        raise RunDataError(f"{run_dir} has neither metrics.jsonl nor TensorBoard files in tb/: is it a run directory?")
    return RunData(run_dir, series, run_hyperparameters(run_dir), wall_s, used, files.evaluated_steps())


def read_tensorboard(tb_dir: Path) -> tuple[dict[str, Series], float | None]:
    """Every scalar point of every event file in `tb_dir`, and the span of their wall times."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    series: dict[str, Series] = {}
    times: list[float] = []
    for tag in accumulator.Tags()[SCALARS]:
        by_step = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
        times += [event.wall_time for event in accumulator.Scalars(tag)]
        steps = sorted(by_step)
        series[tag] = Series(steps, [by_step[step] for step in steps])
    return series, (max(times) - min(times)) if times else None


def _jsonl_wall_s(run_dir: Path) -> float | None:
    files = RunDir(run_dir)
    if not files.registry_file.exists():
        return None
    started = json.loads(files.registry_file.read_text()).get("started_at")
    return files.metrics.stat().st_mtime - started if started else None
