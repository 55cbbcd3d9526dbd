"""The reference role: log-probs of rollouts under the frozen initial policy (for the
KL to the reference), a chunk of tokens at a time (roles.logprobs.response_logprobs)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import ComputeLogProbs, LogProbs
from roles.generation import CpuThreads, autocast_for, limit_cpu_threads, load_causal_lm
from roles.logprobs import batch_logprobs
from runtime.actor import Actor, handler


class ReferenceConfig(BaseModel):
    """The frozen reference model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """A local Hugging Face causal LM directory: the initial policy."""
    dtype: str = "float32"
    device: str = "cpu"
    micro_batch_size: int = Field(32, ge=1)
    """Rows per forward."""
    cpu_threads: CpuThreads = "auto"
    """torch threads on the CPU: a number, ``auto`` (every core this process may use for
    a model of 20M parameters or more, else 1), or None (torch's default). The reference
    runs beside the reward and, when they are asked for, the critic's values and the
    trainer's recomputed log-probs: on a small machine give each part of the cores then."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Forward under torch.autocast in this dtype (as the trainer's `autocast`: use the
    same setting, so the KL of the unchanged policy to the reference is 0)."""


class Reference(Actor):
    """Serves the reference policy's log-probs (see the module docstring)."""

    role = "reference"
    Config: ClassVar[type[BaseModel]] = ReferenceConfig

    def __init__(self, name: str, config: ReferenceConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config

    async def on_start(self) -> None:
        self.model, _ = await self.compute.run(load_causal_lm, self.config.model, self.config.dtype, self.config.device)
        self.model.requires_grad_(False)
        await self.compute.run(limit_cpu_threads, self.config.device, self.config.cpu_threads, self.model)

    @handler
    async def compute_logprobs(self, request: ComputeLogProbs) -> LogProbs:
        return LogProbs(await self.compute.run(self._logprobs, request.batch, request.temperature))

    @torch.no_grad()
    def _logprobs(self, batch: Batch, temperature: float) -> torch.Tensor:
        pieces = []
        for micro in batch.split_by_size(self.config.micro_batch_size):
            with autocast_for(self.config.device, self.config.autocast):
                logprobs, _ = batch_logprobs(self.model, micro.to(self.config.device), temperature)
            pieces.append(logprobs.float().cpu())
        return torch.cat(pieces)
