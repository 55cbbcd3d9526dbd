"""The trainer role: the policy, updated with PPO-style losses on T ranks.

T trainer processes form one torch.distributed group (gloo on CPUs, NCCL on GPUs)
and, for T > 1, shard the model with FSDP2. The controller sends every rank the same
messages in the same order; each rank trains on its slice of the batch, so the
collectives (FSDP gathers, gradient reduction) line up. Rank 0 answers with the
numbers and publishes weights to the generators (runtime.weights).

One update (`Train`) runs the loop the critic shares (roles.update.run_update):
`ppo_epochs` passes over the batch in shuffled mini-batches, each one AdamW step with a
warm-up then constant or cosine learning rate, its gradient accumulated over
micro-batches and clipped. The trainer's part is a micro-batch's loss
(`Trainer._micro_batch_loss`): policy loss (PPO, GSPO or CISPO by `policy_loss.type`:
roles.algorithms.compute_policy_loss) + KL loss (when the controller asks for it) -
entropy bonus. The ratio's "old" log-probs are the ones the controller chose
(roles.algorithms.old_logprobs: recomputed before the update, the update's own when it
is a single optimizer step, or the generator's); the plan's rollout correction
(roles.algorithms.rollout_correction: truncated or masked importance weights of those
to the generator's, per token or per sequence; in async mode by default a token-level
truncation at `importance_cap`) weights the loss. Log-probs come from roles.logprobs (the reference's from the same
function), a chunk of tokens at a time, optionally under bfloat16 autocast
(`autocast`). Checkpoints use torch.distributed.checkpoint, read back through
an allow-listed index reader (runtime.checkpoint_reader), and only in a step folder of
the run's checkpoints/ (roles.checkpoints.confine_checkpoint_path).

With ``lora`` the policy is a peft LoRA adapter on a frozen base (roles.lora): the
same loop trains the adapter alone, checkpoints and the weight channel carry it alone,
and `compute_logprobs` with ``base`` gives the base model's log-probs (the adapter
disabled), which makes a separate reference process unnecessary.
"""

from __future__ import annotations

import datetime
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar
import torch
import torch.distributed as dist
from pydantic import BaseModel, Field

from protocols.batch import Batch
from protocols.rl import (
    CheckpointDone,
    Column,
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
    compute_policy_loss,
    check_old_logprob_source,
    optimizer_steps_per_update,
    micro_batch_weight,
    mismatch_metrics,
    rollout_correction_weights,
    select_old_logprobs,
)
from roles.algorithms.policy_loss import PolicyLossConfig
from roles.algorithms.policy_loss_registry import PolicyLossChoice
from roles.algorithms.rollout_correction import needs_old_logprobs_before_update, sequence_share
from roles.checkpoints import confine_checkpoint_path
from roles.logprobs import batch_logprobs, by_length, rollout_logprobs
from roles.lora import LoraSettings, base_model, channel_name, wrap_model
from roles.model_settings import AutocastDtype, ModelSettings
from roles.models import autocast_for, limit_cpu_threads, load_causal_lm
from roles.rendezvous import trainer_rendezvous
from roles.rollout import without_rows_weight
from roles.update import MicroBatch, MicroBatchLoss, OptimConfig, Optimization, UpdateConfig, run_update
from runtime.actor import handler
from runtime.errors import ActorError
from runtime.files import write_atomically
from runtime.weights.config import WeightChannelConfig
from runtime.weights.publisher import PublishesWeights, WeightPublisher


class TrainerConfig(ModelSettings):
    """The policy model (`ModelSettings`: ``model``, ``dtype``, ``device``,
    ``cpu_threads``) and how it is trained."""

    ranks: int = Field(1, ge=1)
    """Trainer processes in the FSDP group. Derived: the launcher sets it to the trainer
    role's `count` for every instance, and a topology does not write it."""
    init_method: str | None = None
    """Rendezvous of the trainers' group: ``tcp://HOST:PORT`` (rank 0 serves a store
    there) or any torch init method; default: rank 0's store on its own address, found
    through the registry (roles.rendezvous)."""
    autocast: AutocastDtype | None = None
    """Run forward and backward under torch.autocast in this dtype (the weights,
    gradients and optimizer stay in `dtype`; log-softmax arithmetic stays float32).
    ``bfloat16`` roughly halves a step on CPUs with bfloat16 instructions. The recomputed
    old log-probs use it too, so the PPO ratio of an unchanged policy stays 1."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """AdamW and its learning-rate schedule."""
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    """How one batch becomes optimizer steps (epochs, mini- and micro-batch sizes)."""
    policy_loss: PolicyLossChoice = Field(default_factory=PolicyLossConfig)
    """The policy loss, by `type`: ppo (the default, also when `type` is left out), gspo or
    cispo; its clip ranges and how token losses are aggregated."""
    entropy_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus (0: entropy is logged only)."""
    channel: WeightChannelConfig = Field(default_factory=WeightChannelConfig)
    """The weight channel to the generators."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter (roles.lora) instead of every weight: the base stays frozen,
    AdamW keeps state for the adapter only, checkpoints hold the adapter, and the weight
    channel sends the adapter alone (generators need the same ``lora``). The trainer
    can then also serve the reference log-probs: the base model's, with the adapter
    disabled (the controller's ``reference_from: trainer``). None: full fine-tuning."""
    seed: int = 0
    """Seed of torch's generator, set before the model loads."""


class Trainer(PublishesWeights):
    """The policy: one rank of the trainer group, holding its shard of the model and of
    AdamW's state (see the module docstring).

    Every rank receives every message, in the same order, so their collectives line up;
    rank 0 answers with the numbers. `compute_logprobs` gives the current policy's
    log-probs of a batch (the "old" ones, when the controller asks for them), `train`
    makes one update (roles.update.run_update with `_micro_batch_loss`), and
    `publish_weights` (PublishesWeights) sends the weights to the generators.
    """

    role = "trainer"
    Config: ClassVar[type[BaseModel]] = TrainerConfig

    def __init__(self, name: str, config: TrainerConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.rank = self.instance
        if self.rank >= config.ranks:
            raise ActorError(f"{name} is rank {self.rank} but the trainer config says ranks: {config.ranks}; set it to the role's count")
        # with an adapter, the channel carries the adapter's tensors alone (roles.lora's names)
        self.weights = WeightPublisher(self, self.rank, config.channel, name_map=channel_name if config.lora else None)
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
        limit_cpu_threads(config.device, config.cpu_threads, self.model, self.compute)
        if config.lora is not None:
            self.model = wrap_model(self.model, config.lora)
        self.model.train()
        if config.ranks > 1:
            shard_model(base_model(self.model), config.device, config.ranks)
        self.optimization = Optimization.build(self.model, config.optim)

    def _rendezvous(self) -> dict[str, Any]:
        """How the trainer ranks find each other: ``store=`` or ``init_method=``
        (roles.rendezvous: rank 0's store on its bound address, found through the
        registry, unless the config's ``init_method`` says otherwise)."""
        return trainer_rendezvous(self, self.rank, self.config.ranks, self.config.init_method)

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
        if request.base and self.config.lora is None:
            raise ActorError(f"{self.name} has no adapter to disable: base-model log-probs (the controller's "
                             "reference_from: trainer) need the trainer's lora settings")
        logprobs = await self.compute.run(self._logprobs, request.batch, request.temperature, request.base)
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
    def _logprobs(self, batch: Batch, temperature: float, base: bool = False) -> torch.Tensor:
        """[N, R] float32 on the CPU: the current policy's log-probs of `batch` (with
        `base`, the base model's: the adapter disabled)."""
        config = self.config
        with self.model.disable_adapter() if base else nullcontext():  # type: ignore[operator]
            return rollout_logprobs(self.model, batch, temperature, config.update.micro_batch_size, config.device,
                                    config.autocast, config.update.max_tokens_per_micro_batch)

    def _train(self, request: Train) -> dict[str, float]:
        config, update = self.config, self.config.update
        # the controller's plan (roles.algorithms.step) is followed, only checked against this trainer's settings
        check_old_logprob_source(request.old_logprobs,
                                 optimizer_steps_per_update(request.batch.size, config.ranks, update.ppo_epochs,
                                                            update.mini_batch_size))
        local = rank_slice(request.batch, self.rank, config.ranks).to(config.device)
        # rows of similar length in a micro-batch keep padding out of its forward (batch_logprobs)
        result = run_update(self.optimization, local, update, request.step,
                            lambda micro: self._micro_batch_loss(micro, request),
                            mini_batch_rows=max(1, update.mini_batch_size // config.ranks), micro_batch_order=by_length,
                            group_count=self._most_micro_batches if config.ranks > 1 else None)
        self.optimizer_steps += result.optimizer_steps
        return {**result.stats, "train/lr": self.optimization.scheduler.get_last_lr()[0]}

    def _most_micro_batches(self, count: int) -> int:
        """The most micro-batches any rank cut its share of a mini-batch into (under a
        token budget each rank cuts its own rows): every rank runs that many forwards."""
        most = torch.tensor([count], device=self.config.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item())

    def _micro_batch_loss(self, micro: MicroBatch, request: Train) -> MicroBatchLoss:
        """The micro-batch's policy loss (+ KL loss - entropy bonus) and its share of the
        mini-batch's in the configured aggregation; the logged numbers are token means,
        weighted by the micro-batch's token share (``train/loss`` by the loss's share)."""
        config, losses = self.config, self.config.policy_loss
        t, weight = micro.batch.tensors, micro.token_share
        mask = t["response_mask"]
        loss_weight = micro_batch_weight(losses.loss_agg_mode, mask, micro.mini_batch.tensors["response_mask"])
        with autocast_for(config.device, config.autocast):
            logprobs, entropy = batch_logprobs(self.model, micro.batch, request.temperature, with_entropy=True)
        assert entropy is not None
        if config.entropy_coef == 0:
            entropy = entropy.detach()  # logged only: its gradient is not computed
        old = select_old_logprobs(request.old_logprobs, t, logprobs)
        stats: dict[str, float] = {}
        # rollout correction and mismatch metrics between pi_old and the generator (roles.algorithms.rollout_correction)
        correction, importance_weights, behavior = request.rollout_correction, None, t.get(Column.BEHAVIOR_LOGPROBS)
        if correction is not None:
            applied = rollout_correction_weights(old, t[Column.BEHAVIOR_LOGPROBS], mask, correction)
            importance_weights = applied.weights
            stats["train/importance_ratio"] = weight * float(applied.token_ratio.sum() / mask.sum().clamp(min=1.0))
        # generator vs pi_old: with recomputed old log-probs the step function measured it on the whole batch;
        # with the update's own, only here, one micro-batch at a time (the means, not the extremes)
        if behavior is not None and request.old_logprobs == "current":
            mini_mask = micro.mini_batch.tensors[Column.RESPONSE_MASK]
            stats.update(mismatch_metrics(old, behavior, mask, correction).shares(weight, sequence_share(mask, mini_mask)))
        if needs_old_logprobs_before_update(correction):  # a mask with denominator: kept (the plan recomputed old)
            assert correction is not None
            mini = micro.mini_batch.tensors
            kept_mini = rollout_correction_weights(mini[Column.OLD_LOGPROBS], mini[Column.BEHAVIOR_LOGPROBS],
                                                   mini[Column.RESPONSE_MASK], correction).kept
            # masked tokens leave the whole loss below (policy, entropy bonus, KL loss) and its logged means
            mask = applied.kept
            loss_weight = micro_batch_weight(losses.loss_agg_mode, mask, kept_mini)
            weight = float(mask.sum() / kept_mini.sum().clamp(min=1.0))
        policy = compute_policy_loss(losses, logprobs, old, t["advantages"], mask, importance_weights)
        entropy_mean = (entropy * mask).sum() / mask.sum().clamp(min=1.0)
        # the entropy bonus is aggregated as the policy loss is (verl's convention)
        entropy_term = aggregate_loss(entropy, mask, losses.loss_agg_mode, losses.loss_scale_factor) if config.entropy_coef else 0.0
        loss = policy.loss - config.entropy_coef * entropy_term
        stats["train/kl_loss"] = 0.0
        if request.kl_estimator is not None:
            kl = compute_kl(logprobs, t["ref_logprobs"], request.kl_estimator)  # type: ignore[arg-type]
            kl_term = compute_kl_loss(kl, mask, request.kl_coef, losses.loss_agg_mode, losses.loss_scale_factor)
            loss = loss + kl_term.loss
            stats["train/kl_loss"] = loss_weight * float(kl_term.kl_mean)  # the KL is aggregated as the loss is
        stats.update({
            "train/loss": loss_weight * float(policy.loss.detach()),
            "train/entropy": weight * float(entropy_mean.detach()),
            "train/pg_clipfrac": weight * float(policy.clip_fraction),
            "train/ppo_kl": weight * float(policy.ppo_kl),  # verl's: mean of old - new (k1)
            "train/approx_kl": weight * float(policy.approx_kl),  # k3 of the same
        })
        return MicroBatchLoss(loss, loss_weight, stats)

    def _checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """(model state, optimizer state, the options to set them back with). With an
        adapter, the model state is the adapter alone (torch keeps a tied output head
        among the "unfrozen" entries; it is frozen here) and the base is not loaded back."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        adapter = self.config.lora is not None
        options = StateDictOptions(ignore_frozen_params=adapter, strict=not adapter)
        model_state, optim_state = get_state_dict(self.model, self.optimization.optimizer, options=options)
        if adapter:
            trainable = {name for name, parameter in self.model.named_parameters() if parameter.requires_grad}
            model_state = {name: tensor for name, tensor in model_state.items() if name in trainable}
        return model_state, optim_state, options

    def _save(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp

        model_state, optim_state, _ = self._checkpoint_state()
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / "trainer"))
        if self.rank == 0:
            meta = {"version": self.weights.version, "optimizer_steps": self.optimizer_steps,
                    "scheduler": self.optimization.scheduler.state_dict()}
            write_atomically(path / "trainer_meta.json", json.dumps(meta))

    def _load(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from runtime.checkpoint_reader import load_distributed_checkpoint

        model_state, optim_state, options = self._checkpoint_state()
        state = {"model": model_state, "optim": optim_state}
        load_distributed_checkpoint(state, path / "trainer")
        set_state_dict(self.model, self.optimization.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=options)
        meta = json.loads((path / "trainer_meta.json").read_text())
        self.weights.version = meta["version"]
        self.optimizer_steps = meta["optimizer_steps"]
        self.optimization.scheduler.load_state_dict(meta["scheduler"])


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
