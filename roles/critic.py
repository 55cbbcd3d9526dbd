"""The critic role (PPO with GAE): a value head on a causal LM's last hidden state.

The value of response token t is predicted from the hidden state just before it
(the same position whose logits sample token t), so values line up with log-probs.
Trained with the clipped value loss of roles.algorithms on the returns GAE gives, by
the update loop the trainer uses too (roles.update.run_update).
Its checkpoint, ``critic.pt``, is written atomically and read with
``torch.load(weights_only=True)``: tensors and plain containers, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from protocols.batch import Batch
from protocols.rl import CheckpointDone, ComputeValues, LoadCheckpoint, SaveCheckpoint, Train, TrainStats, Values
from roles.algorithms import clipped_value_loss
from roles.checkpoints import confine_checkpoint_path
from roles.logprobs import pad_columns, sequence_inputs, without_unused_padding
from roles.micro_batches import per_row
from roles.model_settings import ModelSettings
from roles.models import limit_cpu_threads, load_causal_lm
from roles.update import MicroBatch, MicroBatchLoss, OptimConfig, Optimization, UpdateConfig, run_update
from runtime.actor import Actor, handler
from runtime.files import replacing_atomically


class CriticConfig(ModelSettings):
    """The value model (`ModelSettings`: ``model``, a causal LM directory whose body is
    the value model's trunk, ``dtype``, ``device``, ``cpu_threads``) and how it is trained."""

    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-5))
    """AdamW and its learning-rate schedule for the value model."""
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    """How one batch becomes optimizer steps (epochs, mini- and micro-batch sizes); the
    value pass cuts its micro-batches the same way (rows, or a token budget)."""
    clip_range_value: float | None = Field(0.5, gt=0)
    """Value clipping around the rollout-time values; None: no clipping."""
    seed: int = 0
    """Seed of torch's generator, set before the model loads (the value head's initial weights)."""


class ValueModel(torch.nn.Module):
    """A causal LM's trunk with a scalar head."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.trunk = lm.model  # type: ignore[attr-defined]
        self.head = torch.nn.Linear(lm.config.hidden_size, 1)  # type: ignore[attr-defined]
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        """[N, R] values of the response positions (0 on padding). Padding columns no row
        uses stay out of the forward (roles.logprobs.without_unused_padding), so a
        micro-batch of short rows costs what its longest row needs."""
        columns = without_unused_padding(batch)
        hidden = self.trunk(**sequence_inputs(columns.prompt_ids, columns.prompt_mask, columns.response_ids,
                                              columns.response_attention)).last_hidden_state
        width = columns.prompt_ids.shape[1]
        before_each = hidden[:, width - 1 : width - 1 + columns.response_ids.shape[1]]
        values = self.head(before_each).squeeze(-1).float() * columns.response_mask
        return pad_columns(values, batch.tensors["response_mask"].shape[1])


class Critic(Actor):
    """The value model of PPO with GAE (see the module docstring).

    `compute_values` gives the values [N, R] of a rollout batch's response tokens (the
    controller's GAE input); `train` makes one update towards the returns [N, R] with the
    clipped value loss; its checkpoint is ``critic.pt`` in the step's folder.
    """

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
        limit_cpu_threads(config.device, config.cpu_threads, lm, self.compute)
        self.model = ValueModel(lm).to(config.device).train()
        self.optimization = Optimization.build(self.model, config.optim)

    @handler
    async def compute_values(self, request: ComputeValues) -> Values:
        return Values(await self.compute.run(self._values, request.batch))

    @handler
    async def train(self, request: Train) -> TrainStats:
        return TrainStats(await self.compute.run(self._train, request))

    @handler
    async def save_checkpoint(self, request: SaveCheckpoint) -> CheckpointDone:
        folder = confine_checkpoint_path(self.run_dir, request.path)
        optimization = self.optimization
        state = {"model": self.model.state_dict(), "optim": optimization.optimizer.state_dict(),
                 "scheduler": optimization.scheduler.state_dict()}
        await self.compute.run(save_state, state, folder / "critic.pt")
        return CheckpointDone(request.path, 0)

    @handler
    async def load_checkpoint(self, request: LoadCheckpoint) -> CheckpointDone:
        folder = confine_checkpoint_path(self.run_dir, request.path)
        # weights_only given explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides calls that leave it out
        state = await self.compute.run(lambda: torch.load(folder / "critic.pt", map_location="cpu", weights_only=True))
        self.model.load_state_dict(state["model"])
        self.optimization.optimizer.load_state_dict(state["optim"])
        self.optimization.scheduler.load_state_dict(state["scheduler"])
        return CheckpointDone(request.path, 0)

    @torch.no_grad()
    def _values(self, batch: Batch) -> torch.Tensor:
        """[N, R] values on the CPU, in micro-batches as the update cuts them (`update`)."""
        update = self.config.update
        return per_row(lambda micro: self.model(micro.to(self.config.device)).cpu(), batch,
                       update.micro_batch_size, update.max_tokens_per_micro_batch)

    def _train(self, request: Train) -> dict[str, float]:
        result = run_update(self.optimization, request.batch.to(self.config.device), self.config.update, request.step,
                            self._micro_batch_loss, grad_norm_name="train/critic_grad_norm")
        return result.stats

    def _micro_batch_loss(self, micro: MicroBatch) -> MicroBatchLoss:
        """The clipped value loss of the micro-batch (a token mean), weighted by its token
        share of the mini-batch, as are the logged numbers."""
        t = micro.batch.tensors
        loss = clipped_value_loss(self.model(micro.batch), t["values"], t["returns"], t["response_mask"],
                                  self.config.clip_range_value)
        stats = {"train/value_loss": micro.token_share * float(loss.loss.detach()),
                 "train/vf_clipfrac": micro.token_share * float(loss.clip_fraction)}
        return MicroBatchLoss(loss.loss, micro.token_share, stats)


def save_state(state: dict[str, Any], path: Path) -> None:
    """`torch.save` that leaves either the old file or the whole new one at `path`."""
    with replacing_atomically(path) as partial:
        torch.save(state, partial)
