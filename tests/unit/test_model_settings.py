"""One model settings type (roles.model_settings) for every role that loads a model:
a wrong dtype or device is refused by `troupe validate` with its field path, and the
topology files written before it validate as they did."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
import yaml

from launch.topology import TopologyError, load_topology
from roles.critic import CriticConfig
from roles.generator import GeneratorConfig
from roles.model_settings import DEVICE_TYPES, ModelPlacement, ModelSettings
from roles.reference import ReferenceConfig
from roles.rewards.config import RewardModelRewardConfig
from roles.trainer import TrainerConfig

REPO = Path(__file__).resolve().parents[2]


def test_every_role_config_that_loads_a_causal_lm_is_a_model_settings():
    for config in (TrainerConfig, GeneratorConfig, ReferenceConfig, CriticConfig):
        assert issubclass(config, ModelSettings)
        assert {"model", "dtype", "device", "cpu_threads"} <= set(config.model_fields)
    assert issubclass(RewardModelRewardConfig, ModelPlacement)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_the_devices_accepted_before_are_accepted(device: str):
    assert ModelSettings(model="m", device=device).device == device


def test_every_device_type_accepted_is_one_torch_reads():
    for device_type in DEVICE_TYPES:
        assert torch.device(f"{device_type}:1").type == device_type


@pytest.mark.parametrize("device", ["gpu", "cuda0", "", "cuda:x"])
def test_a_string_torch_cannot_read_as_a_device_is_refused(device: str):
    with pytest.raises(pydantic.ValidationError, match="is not a torch device; write cpu, cuda or cuda:N"):
        ModelSettings(model="m", device=device)


def test_a_dtype_outside_the_supported_ones_is_refused():
    with pytest.raises(pydantic.ValidationError, match="'float32', 'bfloat16' or 'float16'"):
        ModelSettings(model="m", dtype="float64")  # type: ignore[arg-type]
    assert ModelSettings(model="m", dtype="bfloat16").dtype == "bfloat16"


def test_a_reward_model_stays_frozen_and_keeps_its_defaults():
    config = RewardModelRewardConfig(path="rm")
    assert (config.dtype, config.device) == ("float32", "cpu")
    with pytest.raises(pydantic.ValidationError):
        config.device = "cuda"  # type: ignore[misc]


def ppo_topology(tmp_path: Path, **roles_config: dict[str, object]) -> Path:
    """examples/arith-ppo.yaml with some role config keys replaced."""
    raw = yaml.safe_load((REPO / "examples" / "arith-ppo.yaml").read_text())
    for role, changes in roles_config.items():
        raw["roles"][role]["config"].update(changes)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_wrong_dtype_or_device_fails_validation_with_its_field_path(tmp_path: Path):
    path = ppo_topology(tmp_path, trainer={"dtype": "bf16"}, critic={"device": "gpu:0"})
    with pytest.raises(TopologyError) as error:
        load_topology(path)
    problems = {problem.path: problem.message for problem in error.value.problems}
    assert set(problems) == {"roles.trainer.config.dtype", "roles.critic.config.device"}
    assert "'float32', 'bfloat16' or 'float16'" in problems["roles.trainer.config.dtype"]
    assert "write cpu, cuda or cuda:N" in problems["roles.critic.config.device"]


def test_the_flat_fields_of_existing_topologies_still_validate(tmp_path: Path):
    path = ppo_topology(tmp_path, generator={"dtype": "bfloat16", "device": "cpu", "cpu_threads": 1},
                        reference={"dtype": "float32", "cpu_threads": None})
    _, configs = load_topology(path)
    assert (configs["generator"].dtype, configs["generator"].cpu_threads) == ("bfloat16", 1)
    assert configs["reference"].cpu_threads is None and configs["critic"].cpu_threads == "auto"
