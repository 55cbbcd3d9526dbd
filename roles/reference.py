"""The reference role: log-probs of rollouts under the frozen initial policy (for the
KL to the reference)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import ComputeLogProbs, LogProbs
from roles.generation import limit_cpu_threads, load_causal_lm
from roles.trainer import forward_batch
from runtime.actor import Actor, handler


class ReferenceConfig(BaseModel):
    """The frozen reference model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """A local Hugging Face causal LM directory: the initial policy."""
    dtype: str = "float32"
    device: str = "cpu"
    micro_batch_size: int = Field(32, ge=1)
    cpu_threads: int | None = Field(1, ge=1)
    """torch threads on the CPU (role processes share the cores); None: torch's default."""
    """Rows per forward."""


class Reference(Actor):
    role = "reference"
    Config: ClassVar[type[BaseModel]] = ReferenceConfig

    def __init__(self, name: str, config: ReferenceConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config

    async def on_start(self) -> None:
        limit_cpu_threads(self.config.device, self.config.cpu_threads)
        self.model, _ = await self.compute.run(load_causal_lm, self.config.model, self.config.dtype, self.config.device)
        self.model.requires_grad_(False)

    @handler
    async def compute_logprobs(self, request: ComputeLogProbs) -> LogProbs:
        return LogProbs(await self.compute.run(self._logprobs, request.batch, request.temperature))

    @torch.no_grad()
    def _logprobs(self, batch: Batch, temperature: float) -> torch.Tensor:
        pieces = []
        for micro in batch.split_by_size(self.config.micro_batch_size):
            logprobs, _ = forward_batch(self.model, micro.to(self.config.device), temperature)
            pieces.append(logprobs.float().cpu())
        return torch.cat(pieces)
