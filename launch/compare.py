"""`troupe compare RUN_DIR...`: the A/B table across runs.

One row per run: the settings that differ between the runs (read from each run's
resolved topology) and the outcomes. Then, for each pair of runs, a paired bootstrap
test of the held-out accuracy difference on the prompts both final evaluations share
(per-prompt accuracy, resampled by prompt). Runs whose final evaluations are not on the
same prompts are flagged and not tested: their accuracies are not comparable.

Outcomes: final reward (mean ``train/reward`` of the last 10 steps), max KL (largest
``train/kl_div``), final and best held-out accuracy with their 95% intervals, diversity
(final ``eval/distinct_2_words_within`` and ``eval/self_bleu_words_within``), mean
generation tokens/s, wall time.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from launch.runs import RunData, RunDataError
from roles.evaluation.accuracy import PairedDifference, paired_bootstrap

FINAL_WINDOW = 10
"""Final reward: the mean of this many last steps (one step's reward is noisy)."""


@dataclass
class PairTest:
    """The accuracy difference of run b minus run a, or why it was not tested."""

    a: str
    b: str
    result: PairedDifference | None = None
    flag: str | None = None


@dataclass
class Comparison:
    columns: list[str]
    rows: list[list[str]]
    pairs: list[PairTest] = field(default_factory=list)


def differing_settings(runs: Sequence[RunData]) -> list[str]:
    """Setting keys whose values are not the same in every run, sorted."""
    keys = sorted({key for run in runs for key in run.hyperparameters})
    return [key for key in keys if len({json.dumps(run.hyperparameters.get(key)) for run in runs}) > 1]


def compare_runs(runs: Sequence[RunData], resamples: int = 2000) -> Comparison:
    if len(runs) < 2:
        raise RunDataError("compare needs at least two runs")
    settings = differing_settings(runs)
    outcomes = ["steps", "final reward", "max KL", "final accuracy [95% CI]", "best accuracy [95% CI] @step",
                "distinct-2 (words, within)", "self-BLEU (words, within)", "tokens/s", "wall time (min)"]
    rows = [[run.name, *(_cell(run.hyperparameters.get(key)) for key in settings), *outcome_cells(run)] for run in runs]
    pairs = [pair_test(a, b, resamples) for a, b in combinations(runs, 2)]
    return Comparison(["run", *settings, *outcomes], rows, pairs)


def outcome_cells(run: RunData) -> list[str]:
    reward = run.values("train/reward")
    accuracy = run.series.get("eval/accuracy")
    final = best = "-"
    if accuracy is not None and accuracy.finite().values:
        points = accuracy.finite()
        final = _with_interval(run, points.steps[-1], points.values[-1])
        best_index = max(range(len(points.values)), key=lambda i: points.values[i])
        best = f"{_with_interval(run, points.steps[best_index], points.values[best_index])} @{points.steps[best_index]}"
    tokens = run.values("perf/tokens_per_s")
    return [
        str(run.series["train/reward"].steps[-1]) if reward else "0",
        f"{sum(reward[-FINAL_WINDOW:]) / len(reward[-FINAL_WINDOW:]):.4f}" if reward else "-",
        f"{max(run.values('train/kl_div')):.4g}" if run.values("train/kl_div") else "-",
        final, best,
        _number(run.last("eval/distinct_2_words_within")),
        _number(run.last("eval/self_bleu_words_within")),
        f"{sum(tokens) / len(tokens):.0f}" if tokens else "-",
        f"{run.wall_s / 60:.1f}" if run.wall_s else "-",
    ]


def _with_interval(run: RunData, step: int, value: float) -> str:
    low, high = run.series.get("eval/accuracy_ci_low"), run.series.get("eval/accuracy_ci_high")
    if low is None or high is None or step not in low.steps or step not in high.steps:
        return f"{value:.3f}"
    return f"{value:.3f} [{low.values[low.steps.index(step)]:.3f}, {high.values[high.steps.index(step)]:.3f}]"


def per_prompt_accuracy(run: RunData) -> dict[str, float] | None:
    """Share of correct samples per prompt in the run's last evaluation dump (None: no dump)."""
    if not run.eval_steps:
        return None
    correct_at = run.correct_at()
    counts: dict[str, list[float]] = {}
    for sample in run.eval_samples(run.eval_steps[-1]):
        key = json.dumps([sample["prompt"], sample.get("ground_truth")])
        counts.setdefault(key, []).append(1.0 if sample["score"] >= correct_at else 0.0)
    return {key: sum(values) / len(values) for key, values in counts.items()}


def pair_test(a: RunData, b: RunData, resamples: int) -> PairTest:
    first, second = per_prompt_accuracy(a), per_prompt_accuracy(b)
    if first is None or second is None:
        missing = a.name if first is None else b.name
        return PairTest(a.name, b.name, flag=f"{missing} has no evaluation dump (eval/step_N.jsonl)")
    if first.keys() != second.keys():
        shared = len(first.keys() & second.keys())
        return PairTest(a.name, b.name, flag=(
            f"different eval sets ({len(first)} and {len(second)} prompts, {shared} shared): not compared"))
    keys = sorted(first)
    return PairTest(a.name, b.name, paired_bootstrap([first[k] for k in keys], [second[k] for k in keys], resamples))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def pair_lines(comparison: Comparison) -> list[list[str]]:
    header = ["pair (b - a)", "accuracy difference", "95% CI", "p-value", "prompts", "note"]
    lines = [header]
    for pair in comparison.pairs:
        name = f"{pair.b} - {pair.a}"
        if pair.result is None:
            lines.append([name, "-", "-", "-", "-", pair.flag or ""])
        else:
            r = pair.result
            note = "significant at 5%" if r.p_value < 0.05 else "not significant at 5%"
            lines.append([name, f"{r.difference:+.3f}", f"[{r.low:+.3f}, {r.high:+.3f}]", f"{r.p_value:.3f}", str(r.pairs), note])
    return lines


def render(comparison: Comparison, style: str) -> str:
    """The table as ``md``, ``csv`` or ``html``."""
    pairs = pair_lines(comparison)
    if style == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(comparison.columns)
        writer.writerows(comparison.rows)
        writer.writerow([])
        writer.writerows(pairs)
        return out.getvalue()
    if style == "html":
        return f"<table>{_html_rows([comparison.columns, *comparison.rows])}</table>\n<table>{_html_rows(pairs)}</table>\n"
    if style == "md":
        return f"{_markdown([comparison.columns, *comparison.rows])}\n\n{_markdown(pairs)}\n"
    raise ValueError(f"unknown format {style!r}: md, csv or html")


def _markdown(table: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(table[0]), line(["---"] * len(table[0])), *(line(row) for row in table[1:])])


def _html_rows(table: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table[1:])
    return f"<tr>{head}</tr>{body}"
