"""Health alerts: each fires on a series built to trigger it, with the right step range,
and a healthy run's series raise none."""

from __future__ import annotations

import math
import random

import pytest

from roles.evaluation.health import Alert, HealthThresholds, check_health, runs_of
from roles.evaluation.trends import Series, debiased_ema, series_from_records

STEPS = list(range(1, 201))


def healthy(seed: int = 0) -> dict[str, Series]:
    """A run that learns: reward rises and saturates, KL grows inside its band, entropy
    eases off, lengths drift a little, clip ratio low, eval accuracy rises with reward."""
    rng = random.Random(seed)
    noise = lambda scale: rng.gauss(0.0, scale)  # noqa: E731
    reward = [0.2 + 0.5 * (1 - math.exp(-t / 50)) + noise(0.05) for t in STEPS]
    return {
        "train/reward": Series(STEPS, reward),
        "train/kl_div": Series(STEPS, [0.01 + 0.04 * (1 - math.exp(-t / 80)) + noise(0.002) for t in STEPS]),
        "train/entropy": Series(STEPS, [1.0 - 0.4 * t / 200 + noise(0.02) for t in STEPS]),
        "train/response_length": Series(STEPS, [100 + 20 * t / 200 + noise(3) for t in STEPS]),
        "train/pg_clipfrac": Series(STEPS, [0.05 + abs(noise(0.02)) for t in STEPS]),
        "train/zero_variance_groups": Series(STEPS, [0.3 + noise(0.05) for t in STEPS]),
        "eval/accuracy": Series([0, 50, 100, 150, 200], [0.2, 0.45, 0.58, 0.64, 0.66]),
        "eval/accuracy_ci_high": Series([0, 50, 100, 150, 200], [0.25, 0.5, 0.63, 0.69, 0.71]),
    }


def kinds(alerts: list[Alert]) -> list[str]:
    return [alert.kind for alert in alerts]


@pytest.mark.parametrize("seed", range(10))
def test_a_healthy_run_raises_no_alert(seed: int) -> None:
    assert check_health(healthy(seed)) == []


def with_series(name: str, values: list[float], steps: list[int] = STEPS) -> dict[str, Series]:
    series = healthy()
    series[name] = Series(steps, values)
    return series


@pytest.mark.parametrize("seed", range(5))
def test_reward_oscillation_fires_on_swings_and_names_their_steps(seed: int) -> None:
    rng = random.Random(seed)
    reward = [0.5 + (0.25 * math.sin(2 * math.pi * t / 20) if 80 <= t <= 160 else 0.0) + rng.gauss(0, 0.05) for t in STEPS]
    alerts = [a for a in check_health(with_series("train/reward", reward)) if a.kind == "reward_oscillation"]
    assert len(alerts) == 1
    assert 75 <= alerts[0].first_step <= 100 and 140 <= alerts[0].last_step <= 170
    assert "learning rate" in alerts[0].suggestion and "reversed direction" in alerts[0].evidence


def test_a_noisy_but_flat_reward_is_not_an_oscillation() -> None:
    rng = random.Random(3)
    reward = [0.5 + rng.gauss(0, 0.2) for _ in STEPS]
    assert "reward_oscillation" not in kinds(check_health(with_series("train/reward", reward)))


def test_kl_above_the_band_for_a_few_steps_is_an_explosion() -> None:
    kl = [0.03] * 100 + [0.3, 0.5, 0.8, 1.2] + [0.03] * 96
    alerts = [a for a in check_health(with_series("train/kl_div", kl)) if a.kind == "kl_explosion"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(101, 104)]
    assert "0.01-0.1" in alerts[0].evidence and "adaptive" in alerts[0].suggestion


def test_a_kl_jump_inside_the_band_beyond_3_sigma_is_an_explosion() -> None:
    kl = [0.02 + 0.001 * (t % 3) for t in range(100)] + [0.08] + [0.02] * 99
    alerts = [a for a in check_health(with_series("train/kl_div", kl)) if a.kind == "kl_explosion"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(101, 101)]
    assert "rolling mean + 3 sigma" in alerts[0].evidence


def test_a_band_of_my_own_changes_what_counts() -> None:
    kl = [0.03] * 100 + [0.3] * 5 + [0.03] * 95
    narrow = [a for a in check_health(with_series("train/kl_div", kl)) if a.kind == "kl_explosion"]
    assert [(a.first_step, a.last_step) for a in narrow] == [(101, 105)] and "above the target band" in narrow[0].evidence
    wide = [a for a in check_health(with_series("train/kl_div", kl), HealthThresholds(kl_band=(0.01, 1.0)))
            if a.kind == "kl_explosion"]
    assert len(wide) == 1 and wide[0].first_step == 101 and "jumped to 0.3" in wide[0].evidence


def test_entropy_collapse() -> None:
    entropy = [1.0] * 100 + [0.5, 0.2] + [0.05] * 98
    alerts = [a for a in check_health(with_series("train/entropy", entropy)) if a.kind == "entropy_collapse"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(103, 200)] and "0.05 from 1" in alerts[0].evidence
    assert "entropy_coef" in alerts[0].suggestion


def test_response_length_blowup() -> None:
    length = [100.0] * 120 + [100.0 + 30 * t for t in range(1, 11)] + [400.0] * 70
    alerts = [a for a in check_health(with_series("train/response_length", length)) if a.kind == "length_blowup"]
    assert len(alerts) == 1 and alerts[0].first_step == 124 and "400" in alerts[0].evidence


def test_high_clip_ratio_needs_consecutive_steps() -> None:
    once = [0.05] * 100 + [0.5] + [0.05] * 99
    held = [0.05] * 100 + [0.5, 0.4, 0.35] + [0.05] * 97
    assert "high_clip_ratio" not in kinds(check_health(with_series("train/pg_clipfrac", once)))
    alerts = [a for a in check_health(with_series("train/pg_clipfrac", held)) if a.kind == "high_clip_ratio"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(101, 103)]


def test_groups_without_reward_variance() -> None:
    share = [0.3] * 150 + [0.9] * 50
    alerts = [a for a in check_health(with_series("train/zero_variance_groups", share)) if a.kind == "zero_variance_groups"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(151, 200)] and "90%" in alerts[0].evidence


def test_nan_or_inf_anywhere() -> None:
    loss = [0.5] * 200
    loss[60], loss[61] = math.nan, math.inf
    series = with_series("train/loss", loss)
    alerts = [a for a in check_health(series) if a.kind == "non_finite"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(61, 62)]
    assert "train/loss" in alerts[0].evidence and "inf" in alerts[0].evidence and "nan" in alerts[0].evidence


def test_reward_rising_while_heldout_accuracy_falls_is_reward_hacking() -> None:
    series = healthy()
    series["eval/accuracy"] = Series([0, 50, 100, 150, 200], [0.2, 0.5, 0.62, 0.5, 0.41])
    series["eval/accuracy_ci_high"] = Series([0, 50, 100, 150, 200], [0.25, 0.55, 0.67, 0.55, 0.46])
    alerts = [a for a in check_health(series) if a.kind == "reward_hacking"]
    assert [(a.first_step, a.last_step) for a in alerts] == [(100, 150), (100, 200)]
    assert "eval/step_200.jsonl" in alerts[1].suggestion and "0.62 -> 0.41" in alerts[1].evidence


def test_an_accuracy_dip_inside_its_confidence_interval_is_not_hacking() -> None:
    series = healthy()
    series["eval/accuracy"] = Series([0, 50, 100, 150, 200], [0.2, 0.5, 0.62, 0.58, 0.6])
    series["eval/accuracy_ci_high"] = Series([0, 50, 100, 150, 200], [0.3, 0.6, 0.72, 0.68, 0.7])
    assert "reward_hacking" not in kinds(check_health(series))


def test_alert_line_reads_as_a_sentence() -> None:
    alert = Alert("kl_explosion", 3, 7, "train/kl_div above the target band", "the adaptive KL controller")
    assert alert.line() == "[kl_explosion] steps 3-7: train/kl_div above the target band. Try: the adaptive KL controller"


def test_runs_of_consecutive_flags() -> None:
    assert runs_of([1, 2, 3, 4, 5, 6], [True, True, False, True, True, True], 3) == [(4, 6)]
    assert runs_of([1, 2], [True, True], 1) == [(1, 2)]
    assert runs_of([], [], 1) == []


def test_too_short_series_raise_nothing() -> None:
    assert check_health({"train/reward": Series([1, 2], [0.1, 0.9]), "train/kl_div": Series([1], [0.05])}) == []


# ---------------------------------------------------------------------- trends
def test_debiased_ema_by_hand() -> None:
    # weight 0.5: last = 0.5, 1.25, 1.125; debias 0.5, 0.75, 0.875
    assert debiased_ema([1.0, 2.0, 1.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 1.125 / 0.875])


def test_debiased_ema_passes_non_finite_values_and_constant_series() -> None:
    smoothed = debiased_ema([1.0, math.nan, 3.0], 0.5)
    assert smoothed[0] == 1.0 and math.isnan(smoothed[1]) and smoothed[2] == pytest.approx((0.25 + 1.5) / 0.75)
    assert debiased_ema([2.0, 2.0, 2.0], 0.9) == [2.0, 2.0, 2.0]
    assert debiased_ema([1.0, 5.0], 0.0) == [1.0, 5.0]
    assert debiased_ema([], 0.6) == []
    with pytest.raises(ValueError, match="smoothing weight"):
        debiased_ema([1.0], 1.0)


def test_series_from_records_keeps_numbers_per_step() -> None:
    records = [{"step": 1, "train/reward": 0.5, "source": "x"}, {"step": 0, "eval/accuracy": 0.1},
               {"step": 1, "eval/accuracy": 0.3, "flag": True}, {"step": 1, "train/reward": 0.6}]
    series = series_from_records(records)
    assert series["train/reward"] == Series([1], [0.6]) and series["eval/accuracy"] == Series([0, 1], [0.1, 0.3])
    assert set(series) == {"train/reward", "eval/accuracy"}
