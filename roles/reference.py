"""The reference role: log-probs of rollouts under the frozen initial policy (for the
KL to the reference), computed by the function the trainer's recomputed log-probs come
from (roles.logprobs.rollout_logprobs): with the same weights, micro-batches (rows or
token budget) and autocast the two are equal, and the KL of the unchanged policy to the
reference is 0."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from protocols.batch import Batch
from protocols.rl import ComputeLogProbs, LogProbs
from roles.logprobs import rollout_logprobs
from roles.model_settings import AutocastDtype, ModelSettings
from roles.models import limit_cpu_threads, load_causal_lm
from runtime.actor import Actor, handler


class ReferenceConfig(ModelSettings):
    """The frozen reference model (`ModelSettings`: ``model``, the initial policy's
    directory, ``dtype``, ``device``, ``cpu_threads``)."""

    micro_batch_size: int = Field(32, ge=1)
    """Rows per forward (unused when `max_tokens_per_micro_batch` is set)."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Cut micro-batches by padded tokens instead of rows, as the trainer's
    `update.max_tokens_per_micro_batch` does (rows sorted by length, rows x (widest prompt
    + longest response) at most this). None: `micro_batch_size` rows each. Set both
    alike, so the KL of the unchanged policy to the reference is exactly 0."""
    autocast: AutocastDtype | None = None
    """Forward under torch.autocast in this dtype (as the trainer's `autocast`: use the
    same setting, so the KL of the unchanged policy to the reference is 0)."""


class Reference(Actor):
    """Serves the frozen reference policy's log-probs of rollout batches: `compute_logprobs`
    answers [N, R] float32, 0 on padding (see the module docstring)."""

    role = "reference"
    Config: ClassVar[type[BaseModel]] = ReferenceConfig

    def __init__(self, name: str, config: ReferenceConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config

    async def on_start(self) -> None:
        self.model, _ = await self.compute.run(load_causal_lm, self.config.model, self.config.dtype, self.config.device)
        self.model.requires_grad_(False)
        await self.compute.run(limit_cpu_threads, self.config.device, self.config.cpu_threads, self.model,
                               self.compute)

    @handler
    async def compute_logprobs(self, request: ComputeLogProbs) -> LogProbs:
        return LogProbs(await self.compute.run(self._logprobs, request.batch, request.temperature))

    def _logprobs(self, batch: Batch, temperature: float) -> torch.Tensor:
        """[N, R] float32 on the CPU: the reference's log-probs of `batch`."""
        config = self.config
        return rollout_logprobs(self.model, batch, temperature, config.micro_batch_size, config.device, config.autocast,
                                config.max_tokens_per_micro_batch)
