"""Every `rewards:` YAML block in docs/rewards.md validates against RewardsConfig."""

import pathlib
import re

import pytest
import yaml

from roles.rewards import RewardsConfig

DOC_PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "rewards.md"
REWARDS_BLOCKS = [
    parsed["rewards"]
    for parsed in map(yaml.safe_load, re.findall(r"```yaml\n(.*?)```", DOC_PATH.read_text(), flags=re.DOTALL))
    if isinstance(parsed, dict) and "rewards" in parsed
]


@pytest.mark.parametrize("block", REWARDS_BLOCKS)
def test_documented_block_validates(block):
    RewardsConfig.model_validate(block)


def test_the_page_shows_a_config_for_every_non_sandbox_reward_type():
    configs = [RewardsConfig.model_validate(block) for block in REWARDS_BLOCKS]
    documented_types = {
        spec.type
        for config in configs
        for spec in [*config.by_data_source.values(), config.default]
        if spec is not None
    }

    assert documented_types >= {"arithmetic", "gsm8k", "final_number", "math", "reward_model", "custom"}


def test_the_sandbox_section_heading_is_present():
    assert "\n## Code execution (sandboxed)\n" in DOC_PATH.read_text()
