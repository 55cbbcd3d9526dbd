"""`troupe report RUN_DIR`: trend plots, health alerts and one self-contained HTML page.

`write_report` reads the run (launch.runs), draws one PNG per panel with matplotlib
(raw values faint, TensorBoard's debiased moving average on top; the KL with its target
band; held-out accuracy with its confidence band), runs the health checks of
roles.evaluation.health, and writes ``report/index.html`` with the plots embedded, the
alerts and the final numbers, plus ``report/alerts.json``. docs/evaluation.md explains
every panel and alert.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from launch.runs import RunData, Source, load_run
from roles.evaluation.health import Alert, HealthThresholds, check_health
from roles.evaluation.trends import debiased_ema


@dataclass(frozen=True)
class Panel:
    """One plot: the metrics it draws and how."""

    file: str
    title: str
    names: tuple[str, ...]
    smooth: bool = False
    kl_band: bool = False
    confidence: bool = False
    """Shade each name's ``_ci_low`` .. ``_ci_high`` band."""


PANELS = (
    Panel("reward.png", "Training reward", ("train/reward",), smooth=True),
    Panel("kl.png", "KL to the reference (per token)", ("train/kl_div", "train/kl_k1_token", "train/kl_k3_token"), smooth=True, kl_band=True),
    Panel("kl_coef.png", "KL coefficient", ("train/kl_coef",)),
    Panel("entropy.png", "Policy entropy (nats per token)", ("train/entropy",), smooth=True),
    Panel("response_length.png", "Response length (tokens)", ("train/response_length", "train/response_length_max"), smooth=True),
    Panel("clip_ratio.png", "Clipped share of the PPO ratio", ("train/pg_clipfrac",), smooth=True),
    Panel("accuracy.png", "Held-out accuracy (95% bootstrap CI)", ("eval/accuracy", "eval/pass@*", "eval/maj@*"), confidence=True),
    Panel("diversity.png", "Diversity of held-out samples",
          ("eval/distinct_2_words_within", "eval/distinct_2_tokens_across", "eval/self_bleu_words_within", "eval/seq_rep_2_tokens")),
)
SUMMARY = ("train/reward", "train/kl_div", "train/kl_k3_seq", "train/kl_coef", "train/entropy", "train/response_length",
           "train/pg_clipfrac", "eval/accuracy", "eval/reward", "eval/distinct_2_words_within", "eval/self_bleu_words_within",
           "perf/tokens_per_s")


@dataclass
class Report:
    """What `write_report` wrote."""

    html: Path
    plots: list[Path]
    alerts: list[Alert]
    run: RunData


def panel_names(panel: Panel, run: RunData) -> list[str]:
    """The panel's metrics the run has; ``eval/pass@*`` stands for its largest k."""
    names = []
    for name in panel.names:
        if name.endswith("@*"):
            prefix = name[:-1]
            ks = [int(m.group(1)) for key in run.series if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", key))]
            if ks:
                names.append(f"{prefix}{max(ks)}")
        elif run.values(name):
            names.append(name)
    return names


def draw_panel(panel: Panel, run: RunData, out: Path, smoothing: float, kl_band: tuple[float, float]) -> Path | None:
    """One PNG, or None when the run has none of the panel's metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = panel_names(panel, run)
    if not names:
        return None
    figure, axes = plt.subplots(figsize=(7.0, 3.6), dpi=100)
    try:
        for index, name in enumerate(names):
            color = f"C{index}"
            steps, values = run.series[name].finite()
            if panel.smooth and len(values) > 1:
                axes.plot(steps, values, color=color, alpha=0.3, linewidth=1)
                axes.plot(steps, debiased_ema(values, smoothing), color=color, linewidth=2, label=f"{name} (smoothed {smoothing:g})")
            else:
                axes.plot(steps, values, color=color, marker="o" if len(values) < 30 else None, linewidth=2, label=name)
            low, high = run.series.get(f"{name}_ci_low"), run.series.get(f"{name}_ci_high")
            if panel.confidence and low is not None and high is not None:
                axes.fill_between(low.steps, low.values, high.values, color=color, alpha=0.2)
        if panel.kl_band:
            axes.axhspan(kl_band[0], kl_band[1], color="green", alpha=0.1, label=f"target band {kl_band[0]:g}-{kl_band[1]:g}")
        axes.set_title(panel.title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out / panel.file
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def write_report(run_dir: Path | str, out: Path | None = None, smoothing: float = 0.6, source: Source = "auto",
                 thresholds: HealthThresholds = HealthThresholds()) -> Report:
    """Plots, alerts and the HTML page of a run, in ``RUN_DIR/report`` (or `out`)."""
    run = load_run(run_dir, source)
    if not any(name.startswith("train/") for name in run.series):
        raise ValueError(f"{run.path} has no training metrics yet")
    out = out or run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = [path for panel in PANELS if (path := draw_panel(panel, run, out, smoothing, thresholds.kl_band)) is not None]
    alerts = check_health(run.series, thresholds)
    (out / "alerts.json").write_text(json.dumps([alert.as_dict() for alert in alerts], indent=2))
    page = out / "index.html"
    page.write_text(render_html(run, plots, alerts, smoothing), encoding="utf-8")
    return Report(page, plots, alerts, run)


def render_html(run: RunData, plots: list[Path], alerts: list[Alert], smoothing: float) -> str:
    """One page with everything inline (the PNGs as data URLs), so it can be mailed or archived."""
    e = html.escape
    steps = run.series["train/reward"].steps if "train/reward" in run.series else []
    facts = [("run", str(run.path)), ("steps", f"{steps[-1] if steps else 0}"), ("read from", run.source),
             ("wall time", f"{run.wall_s / 60:.1f} min" if run.wall_s else "unknown"), ("smoothing", f"{smoothing:g}")]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    finals = "".join(f"<tr><th>{e(name)}</th><td>{value:.4g}</td></tr>" for name in SUMMARY if (value := run.last(name)) is not None)
    if alerts:
        alert_rows = "".join(
            f"<tr><td>{e(a.kind)}</td><td>{a.first_step}-{a.last_step}</td><td>{e(a.evidence)}</td><td>{e(a.suggestion)}</td></tr>"
            for a in alerts)
        alert_html = f"<table><tr><th>alert</th><th>steps</th><th>evidence</th><th>suggestion</th></tr>{alert_rows}</table>"
    else:
        alert_html = "<p class=ok>No health alerts.</p>"
    images = "".join(
        f'<figure><img alt="{e(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for path in plots)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>troupe report: {e(run.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 700px; }} .ok {{ color: #270; }}
</style></head><body>
<h1>Run {e(run.name)}</h1>
<table>{rows}</table>
<h2>Health alerts ({len(alerts)})</h2>
{alert_html}
<h2>Final values</h2>
<table>{finals}</table>
<h2>Trends</h2>
{images}
</body></html>
"""
