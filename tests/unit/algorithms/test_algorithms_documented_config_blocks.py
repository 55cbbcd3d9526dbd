"""Every YAML block in docs/algorithms.md validates against the config it documents."""

import pathlib
import re

import pytest
import yaml
from pydantic import TypeAdapter

from roles.algorithms import (
    AdvantageConfig,
    KLConfig,
    KLControllerConfig,
    PolicyLossChoice,
    RolloutCorrectionConfig,
    ValueLossConfig,
)

DOC_PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "algorithms.md"
ADAPTERS = {
    "advantage": TypeAdapter(AdvantageConfig),
    "kl": TypeAdapter(KLConfig),
    "kl_controller": TypeAdapter(KLControllerConfig),
    "policy_loss": TypeAdapter(PolicyLossChoice),
    "rollout_correction": TypeAdapter(RolloutCorrectionConfig),
    "value_loss": TypeAdapter(ValueLossConfig),
}
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC_PATH.read_text(), flags=re.DOTALL)


def test_the_page_has_a_block_for_every_config():
    documented_keys = {key for block in YAML_BLOCKS for key in yaml.safe_load(block)}

    assert documented_keys == set(ADAPTERS)


@pytest.mark.parametrize("block", YAML_BLOCKS)
def test_documented_block_validates(block):
    for key, value in yaml.safe_load(block).items():
        ADAPTERS[key].validate_python(value)
