"""troupe report and troupe compare on run directories written here (metrics.jsonl, the
resolved topology, TensorBoard files, evaluation dumps), and the live health watch."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from launch.compare import compare_runs, differing_settings, render
from launch.report import PANELS, write_report
from launch.runs import RunDataError, load_run
from launch.status import HealthWatch
from roles.metrics import MetricsLog

STEPS = 60
PROMPTS = [f"{a}+{b}=" for a in range(6) for b in range(5)]


def make_run(root: Path, name: str, lr: float, accuracy: float, kl_scale: float = 0.02, seed: int = 0,
             prompts: list[str] = PROMPTS, tensorboard: bool = False, nan_at: int | None = None) -> Path:
    """A run directory as the roles leave it: a learning reward, eval records with CIs
    every 20 steps, a sample dump per evaluation, the resolved topology."""
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    topology = {"name": "arith", "roles": {
        "controller": {"entry": "controller", "count": 1, "config": {"steps": STEPS, "kl": {"usage": "loss"}, "tokenizer": str(run)}},
        "trainer": {"entry": "trainer", "count": 1, "config": {"model": str(run), "optim": {"lr": lr, "grad_clip": 1.0}}},
        "evaluator": {"entry": "evaluator", "count": 1, "config": {"correct_at": 1.0}},
    }}
    (run / "topology.yaml").write_text(yaml.safe_dump(topology))
    log = MetricsLog(run, tensorboard)
    for step in range(1, STEPS + 1):
        log.write(step, {
            "train/reward": 0.2 + 0.5 * (1 - math.exp(-step / 20)) + rng.gauss(0, 0.03),
            "train/kl_div": kl_scale * (1 - math.exp(-step / 30)) + 0.001,
            "train/kl_k3_token": kl_scale * (1 - math.exp(-step / 30)), "train/kl_coef": 0.001,
            "train/entropy": 1.0 - step / 200, "train/response_length": 5.0, "train/response_length_max": 6.0,
            "train/pg_clipfrac": 0.02, "train/zero_variance_groups": 0.2, "perf/tokens_per_s": 1000.0 + step,
            "train/loss": math.nan if step == nan_at else 0.1,
        })
    for step in (0, 20, 40, 60):
        correct = accuracy * (step + 20) / 80
        dump = [{"prompt": p, "response": "1", "extracted": "1", "ground_truth": "1", "score": 1.0 if rng.random() < correct else 0.0,
                 "weights_version": step} for p in prompts for _ in range(2)]
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / f"step_{step}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dump))
        value = sum(d["score"] for d in dump) / len(dump)
        log.write(step, {"eval/accuracy": value, "eval/accuracy_ci_low": value - 0.1, "eval/accuracy_ci_high": value + 0.1,
                         "eval/distinct_2_words_within": 0.5, "eval/self_bleu_words_within": 0.3, "eval/pass@2": min(1, value + 0.1)},
                  source="evaluator")
    log.close()
    return run


def test_report_writes_every_plot_and_one_self_contained_page(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", 1e-4, 0.8)
    report = write_report(run)
    assert {p.name for p in report.plots} == {panel.file for panel in PANELS}  # every panel had data
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    page = report.html.read_text()
    assert report.html == run / "report" / "index.html"
    assert page.count('src="data:image/png;base64,') == len(PANELS) and "No health alerts." in page
    assert json.loads((run / "report" / "alerts.json").read_text()) == []


def test_report_lists_the_alerts_it_finds(tmp_path: Path) -> None:
    run = make_run(tmp_path, "hot", 1e-3, 0.8, kl_scale=0.5, nan_at=33)
    report = write_report(run, tmp_path / "out")
    kinds = {alert.kind for alert in report.alerts}
    assert kinds == {"kl_explosion", "non_finite"}
    page = report.html.read_text()
    assert "kl_explosion" in page and "non_finite" in page and "adaptive KL controller" in page
    assert [a["kind"] for a in json.loads((tmp_path / "out" / "alerts.json").read_text())] == [a.kind for a in report.alerts]


def test_a_run_without_metrics_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDataError, match="neither metrics.jsonl nor TensorBoard"):
        write_report(tmp_path / "empty")
    with pytest.raises(RunDataError, match="not a directory"):
        load_run(tmp_path / "missing")


def test_compare_shows_the_settings_that_differ_and_tests_the_accuracy_difference(tmp_path: Path) -> None:
    low, high = make_run(tmp_path, "lr-low", 1e-4, 0.5, seed=1), make_run(tmp_path, "lr-high", 1e-3, 0.95, seed=2)
    runs = [load_run(low), load_run(high)]
    assert differing_settings(runs) == ["trainer.optim.lr"]  # paths (model, tokenizer) are not settings
    comparison = compare_runs(runs)
    assert comparison.columns[:2] == ["run", "trainer.optim.lr"]
    assert [row[:2] for row in comparison.rows] == [["lr-low", "0.0001"], ["lr-high", "0.001"]]
    (pair,) = comparison.pairs
    assert pair.flag is None and pair.result is not None and pair.result.pairs == len(PROMPTS)
    assert pair.result.difference > 0.2 and pair.result.low > 0 and pair.result.p_value < 0.05
    markdown = render(comparison, "md")
    assert "| lr-high - lr-low |" in markdown and "significant at 5%" in markdown
    csv_text = render(comparison, "csv")
    assert csv_text.splitlines()[0].startswith("run,trainer.optim.lr,steps,final reward")
    assert render(comparison, "html").count("<table>") == 2


def test_compare_flags_runs_evaluated_on_different_prompts(tmp_path: Path) -> None:
    first = make_run(tmp_path, "a", 1e-4, 0.5)
    other = make_run(tmp_path, "b", 1e-4, 0.5, prompts=PROMPTS[:20])
    (pair,) = compare_runs([load_run(first), load_run(other)]).pairs
    assert pair.result is None and pair.flag == "different eval sets (30 and 20 prompts, 20 shared): not compared"
    with pytest.raises(RunDataError, match="at least two"):
        compare_runs([load_run(first)])


def test_tensorboard_files_give_every_point_the_jsonl_does(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tb", 1e-4, 0.8, tensorboard=True)
    from_jsonl, from_tb = load_run(run, "jsonl"), load_run(run, "tb")
    assert from_tb.source == "tb" and from_jsonl.source == "metrics.jsonl"
    for name in ("train/reward", "eval/accuracy", "train/kl_div"):
        assert from_tb.series[name].steps == from_jsonl.series[name].steps
        assert from_tb.series[name].values == pytest.approx(from_jsonl.series[name].values, rel=1e-6)


def test_tensorboard_reading_has_no_sampling_cap(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=True)
    for step in range(10_500):  # TensorBoard's reader keeps 10,000 scalars per tag by default
        log.writer.add_scalar("train/reward", step / 10_500, step)
    log.close()
    assert len(load_run(tmp_path, "tb").series["train/reward"].steps) == 10_500


def test_the_live_health_watch_reports_each_alert_once(tmp_path: Path) -> None:
    watch = HealthWatch(tmp_path, interval_s=0.0)
    assert watch.poll() == []  # no metrics yet
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 11):
        log.write(step, {"train/kl_div": 0.03})
    assert watch.poll() == []
    for step in range(11, 15):
        log.write(step, {"train/kl_div": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as partial:
        partial.write('{"step": 15, "train/kl')  # a line being written is left for later
    (alert,) = watch.poll()
    assert alert.kind == "kl_explosion" and alert.first_step == 11
    with open(tmp_path / "metrics.jsonl", "a") as rest:
        rest.write('_div": 0.6}\n')
    assert watch.poll() == []  # the same explosion going on is not reported again
    assert watch.records[-1] == {"step": 15, "train/kl_div": 0.6}
