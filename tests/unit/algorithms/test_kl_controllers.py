"""Fixed and adaptive KL coefficient controllers, their configs and checkpoints."""

import json

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from roles.algorithms import (
    AdaptiveKLController,
    AdaptiveKLControllerConfig,
    FixedKLController,
    FixedKLControllerConfig,
    KLConfig,
    KLControllerConfig,
    build_kl_controller,
)

ADAPTIVE_YAML = """
kl_controller:
  type: adaptive
  target_kl: 0.05
  kl_coef: 0.5
  kl_coef_max: 1.0
"""


def test_documented_adaptive_yaml_block_means_what_it_says():
    document = yaml.safe_load(ADAPTIVE_YAML)

    config = TypeAdapter(KLControllerConfig).validate_python(document["kl_controller"])
    controller = build_kl_controller(config)

    assert config == AdaptiveKLControllerConfig(target_kl=0.05, kl_coef=0.5, kl_coef_max=1.0, horizon=10000)
    assert isinstance(controller, AdaptiveKLController)
    assert controller.kl_coef == 0.5
    assert controller.target_kl == 0.05
    assert controller.kl_coef_max == 1.0
    assert controller.horizon == 10000


def test_documented_adaptive_yaml_block_is_accepted_by_the_kl_config():
    config = KLConfig.model_validate(yaml.safe_load(ADAPTIVE_YAML))

    assert config.kl_controller == AdaptiveKLControllerConfig(target_kl=0.05, kl_coef=0.5, kl_coef_max=1.0)


def test_adaptive_controller_follows_hand_worked_updates():
    # target 0.05, horizon 10000, 1000 samples per update -> n / H = 0.1
    # kl 0.06:  error = 0.06 / 0.05 - 1 = 0.2  -> 0.5  * (1 + 0.02)  = 0.51
    # kl 0.045: error = -0.1                   -> 0.51 * (1 - 0.01)  = 0.5049
    # kl 0.5:   error = 9, clipped to 0.2      -> 0.5049 * 1.02      = 0.514998
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10000)

    observed = []
    for current_kl in (0.06, 0.045, 0.5):
        controller.update(current_kl, n_steps=1000)
        observed.append(controller.kl_coef)

    assert observed == pytest.approx([0.51, 0.5049, 0.514998])


def test_adaptive_controller_clips_a_large_negative_error_at_minus_point_two():
    # kl 0 -> error -1, clipped to -0.2 -> 0.5 * (1 - 0.2 * 0.1) = 0.49
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10000)

    controller.update(0.0, n_steps=1000)

    assert controller.kl_coef == pytest.approx(0.49)


def test_adaptive_controller_stops_at_kl_coef_max():
    # n / H = 1 and error clipped to 0.2: 0.5 -> 0.6 -> 0.72 -> 0.864 -> 1.0368, capped to 1.0
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10, kl_coef_max=1.0)

    observed = []
    for _ in range(5):
        controller.update(1.0, n_steps=10)
        observed.append(controller.kl_coef)

    assert observed == pytest.approx([0.6, 0.72, 0.864, 1.0, 1.0])


def test_adaptive_controller_never_goes_negative():
    # 1 + (-0.2) * 100 / 10 = -1 -> the coefficient is held at 0
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10)

    controller.update(0.0, n_steps=100)

    assert controller.kl_coef == 0.0


def test_adaptive_controller_rejects_a_nan_kl():
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10)

    with pytest.raises(ValueError, match="current_kl must be finite"):
        controller.update(float("nan"), n_steps=1)


def test_fixed_controller_ignores_updates():
    controller = build_kl_controller(FixedKLControllerConfig(kl_coef=0.02))

    controller.update(10.0, n_steps=1000)

    assert isinstance(controller, FixedKLController)
    assert controller.kl_coef == 0.02


def test_controller_state_round_trips_through_json():
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10000)
    controller.update(0.06, n_steps=1000)

    state = json.loads(json.dumps(controller.state_dict()))
    restored = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10000)
    restored.load_state_dict(state)

    assert state == {"kl_coef": pytest.approx(0.51)}
    assert type(controller.state_dict()["kl_coef"]) is float
    assert restored.kl_coef == controller.kl_coef


def test_loading_a_state_without_kl_coef_names_the_key():
    with pytest.raises(KeyError, match="no 'kl_coef'"):
        FixedKLController(0.1).load_state_dict({"beta": 0.1})


def test_config_rejects_an_initial_coefficient_above_the_cap():
    with pytest.raises(ValidationError, match="kl_coef \\(2.0\\) is above kl_coef_max \\(1.0\\)"):
        AdaptiveKLControllerConfig(target_kl=0.05, kl_coef=2.0, kl_coef_max=1.0)


def test_adaptive_config_requires_a_target():
    with pytest.raises(ValidationError, match="target_kl"):
        TypeAdapter(KLControllerConfig).validate_python({"type": "adaptive", "kl_coef": 0.1})


def test_controller_config_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="kl_target"):
        TypeAdapter(KLControllerConfig).validate_python({"type": "adaptive", "kl_target": 0.05, "target_kl": 0.05})


def test_kl_config_defaults_to_a_fixed_coefficient_in_the_loss():
    config = KLConfig()

    assert config.usage == "loss"
    assert config.estimator == "k3"
    assert config.kl_controller == FixedKLControllerConfig(kl_coef=0.001)


def test_loading_a_state_saved_under_a_higher_cap_resumes_at_the_current_cap():
    controller = AdaptiveKLController(kl_coef=0.5, target_kl=0.05, horizon=10_000, kl_coef_max=1.0)
    controller.load_state_dict({"kl_coef": 3.0})
    assert controller.kl_coef == 1.0
    controller.load_state_dict({"kl_coef": 0.25})
    assert controller.kl_coef == 0.25
