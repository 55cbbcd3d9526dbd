"""The reward role: scores responses with the reward functions of roles.rewards,
chosen per row's data source (`RewardsConfig`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from protocols.rl import Score, Scores
from roles.rewards import RewardRouter, RewardsConfig
from runtime.actor import Actor, handler


class RewardConfig(BaseModel):
    """Which reward function grades each data source."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    """Reward function per data source (see docs/rewards.md)."""


class Reward(Actor):
    """Scores batches of responses; each reply carries the scores, the extracted answers
    and each row's reward terms (correctness, format), which evaluation reports apart."""

    role = "reward"
    Config: ClassVar[type[BaseModel]] = RewardConfig

    def __init__(self, name: str, config: RewardConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.router = RewardRouter.from_config(config.rewards)

    @handler
    async def score(self, request: Score) -> Scores:
        results = await self.compute.run(
            self.router.score_batch, request.prompts, request.responses, request.ground_truths, request.data_sources,
        )
        return Scores([float(result.score) for result in results], [result.extracted for result in results],
                      [result.terms for result in results])
