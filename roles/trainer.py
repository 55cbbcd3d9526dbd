"""The trainer role: the policy, updated with PPO-style losses on T ranks.

T trainer processes form one torch.distributed group (gloo on CPUs, NCCL on GPUs)
and, for T > 1, shard the model with FSDP2. The controller sends every rank the same
messages in the same order; each rank trains on its slice of the batch, so the
collectives (FSDP gathers, gradient reduction) line up. Rank 0 answers with the
numbers and publishes weights to the generators (runtime.weights).

One update (`Train`): `ppo_epochs` passes over the batch in shuffled mini-batches;
each mini-batch is one optimizer step, its gradient accumulated over micro-batches;
loss = policy loss (roles.algorithms.ppo_policy_loss) + KL loss (when the controller
asks for it) - entropy bonus; gradients clipped; AdamW with a warm-up then constant or
cosine learning rate. The ratio's "old" log-probs are the ones the controller chose
(roles.algorithms.old_logprobs: recomputed before the update, the update's own when it
is a single optimizer step, or the generator's); in async mode the loss is weighted by
the truncated importance ratio of those to the generator's. Log-probs come from
`roles.logprobs.response_logprobs`, a chunk of tokens at a time, optionally under
bfloat16 autocast (`autocast`). Checkpoints use torch.distributed.checkpoint, read back through
an allow-listed index reader (runtime.checkpoint_reader), and only in a step folder of
the run's checkpoints/ (roles.checkpoints.confine_checkpoint_path).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import (
    CheckpointDone,
    ComputeLogProbs,
    DescribeUpdate,
    LoadCheckpoint,
    LogProbs,
    SaveCheckpoint,
    Train,
    TrainStats,
    UpdateSettings,
)
from roles.algorithms import (
    aggregate_loss,
    compute_kl,
    compute_kl_loss,
    optimizer_steps_per_update,
    micro_batch_weight,
    ppo_policy_loss,
    select_old_logprobs,
    truncated_importance_weights,
)
from roles.algorithms.policy_loss import PolicyLossConfig
from roles.checkpoints import confine_checkpoint_path
from roles.generation import CpuThreads, autocast_for, limit_cpu_threads, load_causal_lm
from roles.logprobs import batch_logprobs, by_length
from roles.rollout import without_rows_weight
from runtime.actor import handler
from runtime.errors import ActorError
from runtime.run_info import read_run_info
from runtime.files import write_atomically
from runtime.weights.config import WeightChannelConfig
from runtime.weights.group import start_store
from runtime.weights.publisher import PublishesWeights, WeightPublisher


class OptimConfig(BaseModel):
    """AdamW and its learning-rate schedule."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    lr: float = Field(1e-6, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    total_steps: int = Field(1000, ge=1)
    """Optimizer steps the cosine schedule spans."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; None: no clipping (the norm is still logged)."""


class UpdateConfig(BaseModel):
    """How one batch becomes optimizer steps (shared by the trainer and the critic)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    ppo_epochs: int = Field(1, ge=1)
    """Passes over each batch."""
    mini_batch_size: int = Field(64, ge=1)
    """Rows per optimizer step, over all ranks together."""
    micro_batch_size: int = Field(16, ge=1)
    """Rows per forward/backward on one rank (gradient accumulation in between)."""
    shuffle_seed: int = 0


class TrainerConfig(BaseModel):
    """The policy model and how it is trained."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """A local Hugging Face causal LM directory (the initial policy)."""
    ranks: int = Field(1, ge=1)
    """Trainer processes in the FSDP group: the role's `count`."""
    init_method: str | None = None
    """Rendezvous of the trainers' group; default: a file store in the run directory."""
    dtype: str = "float32"
    """Weights dtype (float32, bfloat16, float16); keep float32 for AdamW at small
    learning rates (updates below bfloat16's resolution are lost), and use `autocast`
    for speed."""
    device: str = "cpu"
    cpu_threads: CpuThreads = "auto"
    """torch threads on the CPU: a number, ``auto`` (every core this process may use for
    a model of 20M parameters or more, else 1: in sync mode the roles take turns, so the
    one working has the cores to itself), or None (torch's default). In async mode the
    trainer trains while the generator samples: on a small machine give each part of
    the cores (roles.generation.limit_cpu_threads)."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Run forward and backward under torch.autocast in this dtype (the weights,
    gradients and optimizer stay in `dtype`; log-softmax arithmetic stays float32).
    ``bfloat16`` roughly halves a step on CPUs with bfloat16 instructions. The recomputed
    old log-probs use it too, so the PPO ratio of an unchanged policy stays 1."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    policy_loss: PolicyLossConfig = Field(default_factory=PolicyLossConfig)
    entropy_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus (0: entropy is logged only)."""
    channel: WeightChannelConfig = Field(default_factory=WeightChannelConfig)
    """The weight channel to the generators."""
    seed: int = 0


class Trainer(PublishesWeights):
    """The policy: one rank of the trainer group (see the module docstring)."""

    role = "trainer"
    Config: ClassVar[type[BaseModel]] = TrainerConfig

    def __init__(self, name: str, config: TrainerConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.rank = self.instance
        if self.rank >= config.ranks:
            raise ActorError(f"{name} is rank {self.rank} but the trainer config says ranks: {config.ranks}; set it to the role's count")
        self.weights = WeightPublisher(self, self.rank, config.channel)
        self.optimizer_steps = 0

    # ------------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        await self.compute.run(self._build)

    def _build(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        backend = "nccl" if config.device.startswith("cuda") else "gloo"
        dist.init_process_group(
            backend, **self._rendezvous(), rank=self.rank, world_size=config.ranks, timeout=datetime.timedelta(seconds=600),
        )
        self.model, self.tokenizer = load_causal_lm(config.model, config.dtype, config.device)
        limit_cpu_threads(config.device, config.cpu_threads, self.model)
        self.model.train()
        if config.ranks > 1:
            shard_model(self.model, config.device, config.ranks)
        optim = config.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(optim, step))

    def _rendezvous(self) -> dict[str, Any]:
        """How the trainer ranks find each other: ``store=`` or ``init_method=``.

        One rank needs no rendezvous (an in-process store: no port opened). A ``tcp://``
        init method gets a store that rank 0 serves on that address only (torch's own
        listens on every interface). Otherwise a file store in the run directory.
        """
        init_method = self.config.init_method
        if init_method is None and self.config.ranks == 1:
            return {"store": dist.HashStore()}
        if init_method is not None and init_method.startswith("tcp://"):
            parts = urlsplit(init_method)
            if parts.hostname is None or parts.port is None:
                raise ActorError(f"trainer config init_method {init_method!r} needs tcp://HOST:PORT")
            if self.rank == 0:
                return {"store": start_store(parts.hostname, 600, parts.port)}
            return {"store": dist.TCPStore(parts.hostname, parts.port, is_master=False, timeout=datetime.timedelta(seconds=600))}
        return {"init_method": self._init_method()}

    def _init_method(self) -> str:
        if self.config.init_method:
            return self.config.init_method
        if self.run_dir is None:
            raise ActorError("trainer ranks > 1 need init_method (or a run directory for a file store)")
        launch = read_run_info(self.run_dir).started_at  # a new launch (a resume) gets a new store
        path = self.run_dir / ".rendezvous" / f"trainers-{launch:.0f}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"file://{path}"

    async def on_stop(self) -> None:
        await super().on_stop()
        if dist.is_initialized():
            dist.destroy_process_group()

    def weights_model(self) -> torch.nn.Module:
        return self.model

    # ------------------------------------------------------------------ handlers
    @handler
    async def compute_logprobs(self, request: ComputeLogProbs) -> LogProbs:
        """The current policy's log-probs of the rollouts ("old" log-probs for PPO); every
        rank computes them (the FSDP gathers need all), rank 0 answers with them."""
        logprobs = await self.compute.run(self._logprobs, request.batch, request.temperature)
        return LogProbs(logprobs if self.rank == 0 else torch.zeros(0))

    @handler
    async def describe_update(self, request: DescribeUpdate) -> UpdateSettings:
        """How a batch becomes optimizer steps: the controller decides with it which
        log-probs are "old" (roles.algorithms.old_logprobs)."""
        update = self.config.update
        return UpdateSettings(self.config.ranks, update.ppo_epochs, update.mini_batch_size)

    @handler
    async def train(self, request: Train) -> TrainStats:
        stats = await self.compute.run(self._train, request)
        return TrainStats(stats)

    @handler
    async def save_checkpoint(self, request: SaveCheckpoint) -> CheckpointDone:
        await self.compute.run(self._save, confine_checkpoint_path(self.run_dir, request.path))
        return CheckpointDone(request.path, self.weights.version)

    @handler
    async def load_checkpoint(self, request: LoadCheckpoint) -> CheckpointDone:
        await self.compute.run(self._load, confine_checkpoint_path(self.run_dir, request.path))
        return CheckpointDone(request.path, self.weights.version)

    # ------------------------------------------------------------------ compute
    @torch.no_grad()
    def _logprobs(self, batch: Batch, temperature: float) -> torch.Tensor:
        pieces = []
        for micro in batch.split_by_size(self.config.update.micro_batch_size):
            with autocast_for(self.config.device, self.config.autocast):
                logprobs, _ = batch_logprobs(self.model, micro.to(self.config.device), temperature)
            pieces.append(logprobs.float().cpu())
        return torch.cat(pieces)

    def _train(self, request: Train) -> dict[str, float]:
        config, update = self.config, self.config.update
        steps = optimizer_steps_per_update(request.batch.size, config.ranks, update.ppo_epochs, update.mini_batch_size)
        if request.old_logprobs == "current" and steps != 1:
            raise ActorError(f"the controller asked for the update's own log-probs as the old ones, but this batch "
                             f"takes {steps} optimizer steps (ppo_epochs {update.ppo_epochs}, mini_batch_size "
                             f"{update.mini_batch_size}): set the controller's recompute_logprobs to always")
        local = rank_slice(request.batch, self.rank, config.ranks).to(config.device)
        mini_size = max(1, update.mini_batch_size // config.ranks)
        totals: dict[str, float] = {}
        count = 0
        for epoch in range(update.ppo_epochs):
            order = torch.randperm(local.size, generator=torch.Generator().manual_seed(update.shuffle_seed + 1000 * request.step + epoch))
            for mini in local.select(order).split_by_size(mini_size):
                stats = self._optimizer_step(mini, request)
                for name, value in stats.items():
                    totals[name] = totals.get(name, 0.0) + value
                count += 1
        stats = {name: value / count for name, value in totals.items()}
        stats["train/lr"] = self.scheduler.get_last_lr()[0]
        return stats

    def _optimizer_step(self, mini: Batch, request: Train) -> dict[str, float]:
        config = self.config
        mask_total = mini.tensors["response_mask"].sum().clamp(min=1.0)
        losses = config.policy_loss
        sums = {"train/loss": 0.0, "train/entropy": 0.0, "train/pg_clipfrac": 0.0, "train/ppo_kl": 0.0,
                "train/approx_kl": 0.0, "train/kl_loss": 0.0}
        if request.importance_cap is not None:
            sums["train/importance_ratio"] = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        # the mini-batch's gradient is a sum over its micro-batches whatever their order:
        # rows of similar length together keep padding out of each forward (batch_logprobs)
        for micro in mini.select(by_length(mini)).split_by_size(config.update.micro_batch_size):
            mask = micro.tensors["response_mask"]
            weight = float(mask.sum() / mask_total)  # token means (the logged numbers) over micro-batches
            # the micro-batch's share of the mini-batch's loss in the configured aggregation
            loss_weight = micro_batch_weight(losses.loss_agg_mode, mask, mini.tensors["response_mask"])
            with autocast_for(config.device, config.autocast):
                logprobs, entropy = batch_logprobs(self.model, micro, request.temperature, with_entropy=True)
            assert entropy is not None
            if config.entropy_coef == 0:
                entropy = entropy.detach()  # logged only: its gradient is not computed
            old = select_old_logprobs(request.old_logprobs, micro.tensors, logprobs)
            importance_weights = None
            if request.importance_cap is not None:
                importance = truncated_importance_weights(old, micro.tensors["behavior_logprobs"], mask, request.importance_cap)
                importance_weights = importance.weights
                sums["train/importance_ratio"] += weight * float(importance.mean_ratio)
            policy = ppo_policy_loss(
                logprobs, old, micro.tensors["advantages"], mask,
                importance_weights=importance_weights, **config.policy_loss.model_dump(),
            )
            entropy_mean = (entropy * mask).sum() / mask.sum().clamp(min=1.0)
            # the entropy bonus is aggregated as the policy loss is (verl's convention)
            entropy_term = aggregate_loss(entropy, mask, losses.loss_agg_mode, losses.loss_scale_factor) if config.entropy_coef else 0.0
            loss = policy.loss - config.entropy_coef * entropy_term
            if request.kl_estimator is not None:
                kl = compute_kl(logprobs, micro.tensors["ref_logprobs"], request.kl_estimator)  # type: ignore[arg-type]
                kl_term = compute_kl_loss(kl, mask, request.kl_coef, losses.loss_agg_mode, losses.loss_scale_factor)
                loss = loss + kl_term.loss
                sums["train/kl_loss"] += weight * float(kl_term.kl_mean)
            (loss * loss_weight).backward()
            sums["train/loss"] += loss_weight * float(policy.loss.detach())
            sums["train/entropy"] += weight * float(entropy_mean.detach())
            sums["train/pg_clipfrac"] += weight * float(policy.clip_fraction)
            sums["train/ppo_kl"] += weight * float(policy.ppo_kl)  # verl's: mean of old - new (k1)
            sums["train/approx_kl"] += weight * float(policy.approx_kl)  # k3 of the same
        grad_norm = clip_gradients(self.model, config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer_steps += 1
        sums["train/grad_norm"] = grad_norm
        return sums

    def _save(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / "trainer"))
        if self.rank == 0:
            meta = {"version": self.weights.version, "optimizer_steps": self.optimizer_steps, "scheduler": self.scheduler.state_dict()}
            write_atomically(path / "trainer_meta.json", json.dumps(meta))

    def _load(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from runtime.checkpoint_reader import load_distributed_checkpoint

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        load_distributed_checkpoint(state, path / "trainer")
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        meta = json.loads((path / "trainer_meta.json").read_text())
        self.weights.version = meta["version"]
        self.optimizer_steps = meta["optimizer_steps"]
        self.scheduler.load_state_dict(meta["scheduler"])


# ---------------------------------------------------------------------- shared pieces
def rank_slice(batch: Batch, rank: int, ranks: int) -> Batch:
    """This rank's equal share of `batch`; rows added to even the shares weigh nothing."""
    padded, padding = batch.pad_to_multiple(ranks)
    return without_rows_weight(padded, padding).split(ranks)[rank]


def shard_model(model: torch.nn.Module, device: str, ranks: int) -> None:
    """FSDP2: each decoder layer, then the whole model, sharded over the trainer ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (ranks,))
    for layer in model.model.layers:  # type: ignore[union-attr]
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm (over FSDP shards too); returns the norm before clipping."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm is not None else math.inf)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def lr_factor(optim: OptimConfig, step: int) -> float:
    """The learning rate at optimizer step `step`, as a fraction of the peak."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.total_steps - optim.warmup_steps))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


