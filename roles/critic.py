"""The critic role (PPO with GAE): a value head on a causal LM's last hidden state.

The value of response token t is predicted from the hidden state just before it
(the same position whose logits sample token t), so values line up with log-probs.
Trained with the clipped value loss of roles.algorithms on the returns GAE gives.
Its checkpoint, ``critic.pt``, is written atomically and read with
``torch.load(weights_only=True)``: tensors and plain containers, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import CheckpointDone, ComputeValues, LoadCheckpoint, SaveCheckpoint, Train, TrainStats, Values
from roles.algorithms import clipped_value_loss
from roles.checkpoints import confine_checkpoint_path
from roles.generation import CpuThreads, limit_cpu_threads, load_causal_lm
from roles.trainer import OptimConfig, UpdateConfig, clip_gradients, lr_factor
from runtime.actor import Actor, handler
from runtime.files import replacing_atomically


class CriticConfig(BaseModel):
    """The value model and how it is trained."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """A local Hugging Face causal LM directory; its body is the value model's trunk."""
    dtype: str = "float32"
    device: str = "cpu"
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-5))
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    clip_range_value: float | None = Field(0.5, gt=0)
    """Value clipping around the rollout-time values; None: no clipping."""
    seed: int = 0
    cpu_threads: CpuThreads = "auto"
    """torch threads on the CPU: a number, ``auto`` (every core this process may use for
    a model of 20M parameters or more, else 1), or None (torch's default). The critic's
    values run beside the reference: on a small machine give each part of the cores."""


class ValueModel(torch.nn.Module):
    """A causal LM's trunk with a scalar head."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.trunk = lm.model  # type: ignore[attr-defined]
        self.head = torch.nn.Linear(lm.config.hidden_size, 1)  # type: ignore[attr-defined]
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        """[N, R] values of the response positions."""
        t = batch.tensors
        prompt_ids, response_ids = t["prompt_ids"], t["response_ids"]
        mask = torch.cat([t["prompt_mask"], (t["response_mask"] > 0).to(t["prompt_mask"].dtype)], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.trunk(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1), attention_mask=mask, position_ids=positions,
        ).last_hidden_state
        width = prompt_ids.shape[1]
        before_each = hidden[:, width - 1 : width - 1 + response_ids.shape[1]]
        return self.head(before_each).squeeze(-1).float() * t["response_mask"]


class Critic(Actor):
    """The value model of PPO with GAE (see the module docstring)."""

    role = "critic"
    Config: ClassVar[type[BaseModel]] = CriticConfig

    def __init__(self, name: str, config: CriticConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config

    async def on_start(self) -> None:
        await self.compute.run(self._build)

    def _build(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        lm, _ = load_causal_lm(config.model, config.dtype, config.device)
        limit_cpu_threads(config.device, config.cpu_threads, lm)
        self.model = ValueModel(lm).to(config.device).train()
        optim = config.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(optim, step))

    @handler
    async def compute_values(self, request: ComputeValues) -> Values:
        return Values(await self.compute.run(self._values, request.batch))

    @handler
    async def train(self, request: Train) -> TrainStats:
        return TrainStats(await self.compute.run(self._train, request))

    @handler
    async def save_checkpoint(self, request: SaveCheckpoint) -> CheckpointDone:
        folder = confine_checkpoint_path(self.run_dir, request.path)
        state = {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        await self.compute.run(save_state, state, folder / "critic.pt")
        return CheckpointDone(request.path, 0)

    @handler
    async def load_checkpoint(self, request: LoadCheckpoint) -> CheckpointDone:
        folder = confine_checkpoint_path(self.run_dir, request.path)
        # weights_only given explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides calls that leave it out
        state = await self.compute.run(lambda: torch.load(folder / "critic.pt", map_location="cpu", weights_only=True))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        return CheckpointDone(request.path, 0)

    @torch.no_grad()
    def _values(self, batch: Batch) -> torch.Tensor:
        pieces = [self.model(micro.to(self.config.device)).cpu() for micro in batch.split_by_size(self.config.update.micro_batch_size)]
        return torch.cat(pieces)

    def _train(self, request: Train) -> dict[str, float]:
        config, update = self.config, self.config.update
        batch = request.batch.to(config.device)
        sums = {"train/value_loss": 0.0, "train/vf_clipfrac": 0.0, "train/critic_grad_norm": 0.0}
        steps = 0
        for epoch in range(update.ppo_epochs):
            order = torch.randperm(batch.size, generator=torch.Generator().manual_seed(update.shuffle_seed + 1000 * request.step + epoch))
            for mini in batch.select(order).split_by_size(update.mini_batch_size):
                mask_total = mini.tensors["response_mask"].sum().clamp(min=1.0)
                self.optimizer.zero_grad(set_to_none=True)
                for micro in mini.split_by_size(update.micro_batch_size):
                    t = micro.tensors
                    weight = float(t["response_mask"].sum() / mask_total)
                    loss = clipped_value_loss(self.model(micro), t["values"], t["returns"], t["response_mask"], config.clip_range_value)
                    (loss.loss * weight).backward()
                    sums["train/value_loss"] += weight * float(loss.loss.detach())
                    sums["train/vf_clipfrac"] += weight * float(loss.clip_fraction)
                sums["train/critic_grad_norm"] += clip_gradients(self.model, config.optim.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                steps += 1
        return {name: value / steps for name, value in sums.items()}


def save_state(state: dict[str, Any], path: Path) -> None:
    """`torch.save` that leaves either the old file or the whole new one at `path`."""
    with replacing_atomically(path) as partial:
        torch.save(state, partial)
