"""Health alerts on a run's metric series: what went wrong, where, and what to try.

`check_health(series)` looks at the metrics a run writes (see docs/evaluation.md for
each rule and its thresholds) and returns one `Alert` per problem found, each with the
step range, the evidence in numbers and a suggestion:

reward_oscillation   the smoothed reward swings up and down, well beyond its noise
kl_explosion         the KL to the reference leaves the target band, or jumps above
                     its rolling mean + 3 sigma
entropy_collapse     the policy's entropy falls to a small share of where it started
length_blowup        the mean response length multiplies within a few steps
high_clip_ratio      most of the PPO ratio is clipped, step after step
zero_variance_groups most groups' samples all get the same reward (no GRPO signal)
non_finite           NaN or inf in any metric
reward_hacking       the training reward rises while held-out accuracy falls

The same function serves `troupe report` (the whole run) and `troupe launch`'s live
status (the run so far), so both show the same alerts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from roles.evaluation.trends import Series, debiased_ema

REWARD = "train/reward"
KL = "train/kl_div"
ENTROPY = "train/entropy"
LENGTH = "train/response_length"
CLIP = "train/pg_clipfrac"
ZERO_VARIANCE = "train/zero_variance_groups"
ACCURACY = "eval/accuracy"


@dataclass(frozen=True)
class Alert:
    """One problem a run shows."""

    kind: str
    first_step: int
    last_step: int
    evidence: str
    suggestion: str

    def line(self) -> str:
        steps = f"step {self.first_step}" if self.first_step == self.last_step else f"steps {self.first_step}-{self.last_step}"
        return f"[{self.kind}] {steps}: {self.evidence}. Try: {self.suggestion}"

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "first_step": self.first_step, "last_step": self.last_step,
                "evidence": self.evidence, "suggestion": self.suggestion}


@dataclass(frozen=True)
class HealthThresholds:
    """Where each alert starts (docs/evaluation.md explains every one)."""

    kl_band: tuple[float, float] = (0.01, 0.1)
    """The target band of the KL to the reference; above its top is an explosion."""
    kl_sigma: float = 3.0
    """A KL more than this many rolling standard deviations (at least half the rolling
    mean each) above its rolling mean is a jump."""
    kl_window: int = 20
    """Steps of the rolling mean and standard deviation (a jump needs this many earlier points)."""
    min_run: int = 3
    """Consecutive steps a condition must hold before it is an alert."""
    oscillation_smoothing: float = 0.8
    oscillation_noise_factor: float = 6.0
    """A swing counts when the smoothed reward reverses by more than this many times the
    noise its smoothing leaves (estimated from the step-to-step changes)."""
    oscillation_window: int = 50
    oscillation_reversals: int = 4
    """This many reversals within `oscillation_window` steps is an oscillation."""
    entropy_ratio: float = 0.1
    """Entropy below this share of its starting level (median of the first 5 steps) is a collapse."""
    length_growth: float = 2.0
    length_window: int = 20
    length_min_tokens: float = 32.0
    """A length blow-up: the mean length reaches `length_growth` times its lowest value of
    the previous `length_window` steps, and grew by at least this many tokens."""
    clip_ratio: float = 0.2
    """Share of clipped PPO ratios above which an update moved too far."""
    zero_variance_share: float = 0.5
    zero_variance_run: int = 5
    """Share of groups with equal rewards, held for this many steps."""
    hacking_reward_rise: float = 0.05
    """Reward hacking needs the smoothed reward to rise by this share of its range."""
    hacking_accuracy_drop: float = 0.02
    """... and held-out accuracy to fall by more than this, and more than its own CI half-width."""


def check_health(series: Mapping[str, Series], thresholds: HealthThresholds = HealthThresholds()) -> list[Alert]:
    """Every alert the series show, ordered by first step."""
    checks: list[Callable[[Mapping[str, Series], HealthThresholds], list[Alert]]] = [
        non_finite, reward_oscillation, kl_explosion, entropy_collapse, length_blowup, high_clip_ratio,
        zero_variance_groups, reward_hacking,
    ]
    alerts = [alert for check in checks for alert in check(series, thresholds)]
    return sorted(alerts, key=lambda alert: (alert.first_step, alert.kind))


# ---------------------------------------------------------------------- helpers
def runs_of(steps: Sequence[int], flagged: Sequence[bool], min_length: int, bridge: int = 10) -> list[tuple[int, int]]:
    """(first, last) step of every run of at least `min_length` consecutive flagged
    points; runs apart by fewer than `bridge` unflagged points are one (a value hovering
    at a threshold is one episode, not many)."""
    found: list[tuple[int, int]] = []
    last_index = -bridge - 1
    start = None
    for index, flag in enumerate([*flagged, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            if index - start >= min_length:
                if found and start - last_index - 1 < bridge:
                    found[-1] = (found[-1][0], steps[index - 1])
                else:
                    found.append((steps[start], steps[index - 1]))
                last_index = index - 1
            start = None
    return found


def stretch_alerts(kind: str, points: Series, flagged: Sequence[bool], min_length: int,
                   evidence: Callable[[list[float]], str], suggestion: str) -> list[Alert]:
    """One alert per run of flagged points (`runs_of`); `evidence` reads the values inside it."""
    alerts = []
    for first, last in runs_of(points.steps, flagged, min_length):
        inside = [value for step, value in zip(*points) if first <= step <= last]
        alerts.append(Alert(kind, first, last, evidence(inside), suggestion))
    return alerts


def _fmt(value: float) -> str:
    return f"{value:.4g}"


# ---------------------------------------------------------------------- the checks
def non_finite(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    alerts = []
    for name, points in sorted(series.items()):
        bad = [(step, value) for step, value in zip(points.steps, points.values) if not math.isfinite(value)]
        if bad:
            kinds = sorted({str(value) for _, value in bad})
            alerts.append(Alert(
                "non_finite", bad[0][0], bad[-1][0], f"{name} is {'/'.join(kinds)} at {len(bad)} step(s)",
                "lower the learning rate, keep gradient clipping on (optim.grad_clip), look for empty responses; "
                "resume from the last checkpoint before the first bad step",
            ))
    return alerts


def reward_oscillation(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    points = series.get(REWARD, Series([], [])).finite()
    if len(points.steps) < 2 * thresholds.oscillation_reversals + 2:
        return []
    steps, values = points
    changes = [b - a for a, b in zip(values, values[1:])]
    centre = statistics.median(changes)
    # a robust noise level: the step-to-step changes of white noise have sigma * sqrt(2)
    noise = 1.4826 * statistics.median(abs(change - centre) for change in changes) / math.sqrt(2)
    weight = thresholds.oscillation_smoothing
    smoothed_noise = noise * math.sqrt((1 - weight) / (1 + weight))
    swing = max(thresholds.oscillation_noise_factor * smoothed_noise, 1e-12)
    turns = _turning_points(steps, debiased_ema(values, weight), swing)
    ranges: list[tuple[int, int]] = []
    need = thresholds.oscillation_reversals
    for first in range(len(turns) - need + 1):
        last = first + need - 1
        if turns[last][0] - turns[first][0] <= thresholds.oscillation_window:
            if ranges and turns[first][0] <= ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], turns[last][0])
            else:
                ranges.append((turns[first][0], turns[last][0]))
    alerts = []
    for first_step, last_step in ranges:
        inside = [value for step, value in turns if first_step <= step <= last_step]
        largest = max(abs(b - a) for a, b in zip(inside, inside[1:]))
        alerts.append(Alert(
            "reward_oscillation", first_step, last_step,
            f"the smoothed reward reversed direction {len(inside)} times, swings up to {_fmt(largest)} "
            f"(noise level {_fmt(smoothed_noise)})",
            "a lower learning rate, a tighter clip range, or a larger batch (more prompts or samples per step)",
        ))
    return alerts


def _turning_points(steps: Sequence[int], values: Sequence[float], swing: float) -> list[tuple[int, float]]:
    """The extremes at which the series reverses by more than `swing` (a zigzag): a
    monotonic series has none, however much it moves."""
    turns: list[tuple[int, float]] = []
    high = low = (steps[0], values[0])
    direction, extreme = 0, high
    for point in zip(steps[1:], values[1:]):
        value = point[1]
        if direction == 0:  # until the first move larger than a swing sets the direction
            high = point if value > high[1] else high
            low = point if value < low[1] else low
            if high[1] - low[1] > swing:
                direction, extreme = (1, high) if high[0] > low[0] else (-1, low)
        elif direction * (value - extreme[1]) > 0:
            extreme = point
        elif abs(value - extreme[1]) > swing:
            turns.append(extreme)
            direction, extreme = -direction, point
    return turns


def kl_explosion(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    points = series.get(KL, Series([], [])).finite()
    if not points.steps:
        return []
    steps, values = points
    low, high = thresholds.kl_band
    suggestion = "the adaptive KL controller (kl.kl_controller.type: adaptive) or a larger KL coefficient"
    alerts = stretch_alerts("kl_explosion", points, [value > high for value in values], thresholds.min_run,
                            lambda inside: f"{KL} above the target band {_fmt(low)}-{_fmt(high)} (peak {_fmt(max(inside))})",
                            suggestion)
    window, limits, flagged = thresholds.kl_window, {}, []
    for index, value in enumerate(values):
        before = values[max(0, index - window):index]
        if len(before) < window:  # a full window: the first steps of a run move the KL the most
            flagged.append(False)
            continue
        mean = statistics.fmean(before)
        # sigma has a floor of half the mean (so the limit is at least 2.5x the mean): a
        # steady, rising KL has a tiny spread, and its growth alone would read as a jump
        limits[steps[index]] = limit = mean + thresholds.kl_sigma * max(statistics.pstdev(before), 0.5 * abs(mean), 1e-6)
        flagged.append(value > max(limit, low))
    for first, last in runs_of(steps, flagged, 1):
        if any(alert.first_step <= first <= alert.last_step for alert in alerts):
            continue  # already inside an above-band alert
        peak_step, peak = max(((step, value) for step, value in zip(steps, values) if first <= step <= last), key=lambda p: p[1])
        alerts.append(Alert("kl_explosion", first, last,
                            f"{KL} jumped to {_fmt(peak)}, above its rolling mean + {thresholds.kl_sigma:g} sigma "
                            f"({_fmt(limits[peak_step])})", suggestion))
    return sorted(alerts, key=lambda alert: alert.first_step)


def entropy_collapse(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    points = series.get(ENTROPY, Series([], [])).finite()
    if len(points.steps) < 5 + thresholds.min_run:
        return []
    start = statistics.median(points.values[:5])
    if start <= 0:
        return []
    floor = thresholds.entropy_ratio * start
    return stretch_alerts(
        "entropy_collapse", points, [value < floor for value in points.values], thresholds.min_run,
        lambda inside: f"{ENTROPY} fell to {_fmt(min(inside))} from {_fmt(start)} at the start (below {thresholds.entropy_ratio:g} of it)",
        "an entropy bonus (trainer entropy_coef), a higher sampling temperature, a lower learning rate, or a larger upper clip range",
    )


def length_blowup(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    steps, values = series.get(LENGTH, Series([], [])).finite()
    flagged, origin = [], {}
    for index, value in enumerate(values):
        before = values[max(0, index - thresholds.length_window):index]
        lowest = min(before) if before else value
        grew = lowest > 0 and value >= thresholds.length_growth * lowest and value - lowest >= thresholds.length_min_tokens
        flagged.append(grew)
        if grew:
            origin[steps[index]] = (lowest, value)
    alerts = []
    for first, last in runs_of(steps, flagged, 1):
        lowest, value = origin[last]
        alerts.append(Alert(
            "length_blowup", first, last,
            f"{LENGTH} reached {_fmt(value)} tokens from {_fmt(lowest)} within {thresholds.length_window} steps",
            "look for repetition loops in the samples (eval seq_rep), add an overlong-response penalty, lower "
            "max_new_tokens, or aggregate the loss per token (Dr.GRPO) instead of per sequence",
        ))
    return alerts


def high_clip_ratio(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    points = series.get(CLIP, Series([], [])).finite()
    return stretch_alerts(
        "high_clip_ratio", points, [value > thresholds.clip_ratio for value in points.values], thresholds.min_run,
        lambda inside: f"{CLIP} above {_fmt(thresholds.clip_ratio)} (peak {_fmt(max(inside))})",
        "a lower learning rate, fewer PPO epochs, or larger mini-batches: each update moves the policy too far",
    )


def zero_variance_groups(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    points = series.get(ZERO_VARIANCE, Series([], [])).finite()
    return stretch_alerts(
        "zero_variance_groups", points, [value > thresholds.zero_variance_share for value in points.values],
        thresholds.zero_variance_run,
        lambda inside: f"on average {statistics.fmean(inside):.0%} of the groups had one reward for every sample (no advantage, no gradient)",
        "prompts of a difficulty the policy sometimes solves (filter by pass rate), more samples per prompt "
        "(sampling.n), or a higher sampling temperature",
    )


def reward_hacking(series: Mapping[str, Series], thresholds: HealthThresholds) -> list[Alert]:
    reward = series.get(REWARD, Series([], [])).finite()
    accuracy = series.get(ACCURACY, Series([], [])).finite()
    if len(reward.steps) < 2 or len(accuracy.steps) < 2:
        return []
    smoothed = Series(reward.steps, debiased_ema(reward.values, 0.6))
    rise_needed = thresholds.hacking_reward_rise * max(max(reward.values) - min(reward.values), 1e-12)
    high = series.get(ACCURACY + "_ci_high")
    alerts = []
    for index in range(1, len(accuracy.steps)):
        step, value = accuracy.steps[index], accuracy.values[index]
        best_index = max(range(index), key=lambda i: accuracy.values[i])
        best_step, best = accuracy.steps[best_index], accuracy.values[best_index]
        upper = high.at_or_before(step) if high is not None else None
        half_width = (upper - value) if upper is not None and math.isfinite(upper) else 0.0
        dropped = best - value > max(thresholds.hacking_accuracy_drop, half_width)
        reward_then, reward_now = smoothed.at_or_before(max(best_step, smoothed.steps[0])), smoothed.at_or_before(step)
        if not dropped or reward_then is None or reward_now is None or reward_now - reward_then < rise_needed:
            continue
        alerts.append(Alert(
            "reward_hacking", best_step, step,
            f"the smoothed {REWARD} rose {_fmt(reward_then)} -> {_fmt(reward_now)} while {ACCURACY} fell "
            f"{_fmt(best)} -> {_fmt(value)}",
            f"read eval/step_{step}.jsonl for responses that score without solving the task; tighten the reward's "
            f"answer extraction, add a KL penalty, or keep the checkpoint nearest step {best_step}",
        ))
    return alerts
