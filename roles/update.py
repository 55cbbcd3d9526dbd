"""One update of a trained model, shared by the trainer (the policy) and the critic (the
value model): how a batch becomes optimizer steps.

`run_update` makes ``ppo_epochs`` passes over the batch; each pass shuffles the rows
(seeded by the step and the epoch, so a resumed run shuffles as the original did) and
cuts them into mini-batches; each mini-batch is one AdamW step, its gradient
accumulated over micro-batches, clipped, then the learning rate follows its schedule
(`lr_factor`). What a micro-batch's loss is belongs to the role: it passes a callback
that returns the loss, the loss's share of the mini-batch's, and the numbers to log.

Gradient accumulation is exact: backpropagating each micro-batch's loss times its
share gives the gradient of the whole mini-batch's loss (a token mean over a
mini-batch is the token-weighted sum of its micro-batches' token means), whatever the
micro-batches' sizes and order. So micro-batches can be a fixed number of rows or, with
``max_tokens_per_micro_batch``, rows sorted by length under a budget of padded tokens
(roles.micro_batches): the grouping changes the work, not the step.

With several FSDP ranks every forward and backward is a collective, so every rank must
run as many micro-batches as the others; under a token budget each rank cuts its own
rows into its own number of them. `run_update` then takes a ``group_count`` that
agrees on the most (an all-reduce), and a rank with fewer runs the rest as padding: a
forward and backward of one of its rows with the loss times 0, which adds nothing to
the gradient and nothing to the logged numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import Column
from roles.micro_batches import by_length, micro_batches


class OptimConfig(BaseModel):
    """AdamW and its learning-rate schedule."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    lr: float = Field(1e-6, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay (0: none)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's decay rates of the gradient's first and second moment estimates."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    total_steps: int = Field(1000, ge=1)
    """Optimizer steps the cosine schedule spans."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Where the cosine schedule ends, as a fraction of `lr` (0: at zero)."""
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
    """Rows per forward/backward on one rank (gradient accumulation in between); also the
    rows per forward of the no-gradient passes (old log-probs, the critic's values).
    Unused when `max_tokens_per_micro_batch` is set."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Cut micro-batches by padded tokens instead of rows: each mini-batch's rows, ordered
    by length, go into a micro-batch until one more would make rows x (widest prompt +
    longest response) exceed this (a longer row alone is a micro-batch of one). Same
    for the no-gradient passes. None: `micro_batch_size` rows each. The loss and the
    gradient do not depend on the grouping (roles.micro_batches)."""
    shuffle_seed: int = 0
    """Seed of the row order within each epoch (mixed with the step and the epoch, so a
    resumed run shuffles as the original did)."""


def lr_factor(optim: OptimConfig, step: int) -> float:
    """The learning rate at optimizer step `step`, as a fraction of the peak."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.total_steps - optim.warmup_steps))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm (over FSDP shards too); returns the norm before clipping."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm is not None else math.inf)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


@dataclass
class Optimization:
    """A model with its AdamW optimizer and learning-rate schedule (`OptimConfig`)."""

    model: torch.nn.Module
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    grad_clip: float | None
    """`OptimConfig.grad_clip`: the largest global gradient norm of a step."""

    @classmethod
    def build(cls, model: torch.nn.Module, optim: OptimConfig) -> Optimization:
        """AdamW over the parameters of `model` that train (all of them, but for a
        frozen base under a LoRA adapter), with `lr_factor`'s schedule."""
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=optim.betas,
                                      weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(optim, step))
        return cls(model, optimizer, scheduler, optim.grad_clip)

    def step(self) -> float:
        """Clips the accumulated gradient, steps the optimizer and the schedule; returns
        the gradient norm before clipping."""
        grad_norm = clip_gradients(self.model, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm


class MicroBatch(NamedTuple):
    """One micro-batch of a mini-batch, as a loss callback receives it."""

    batch: Batch
    """The micro-batch's rows (on the model's device)."""
    mini_batch: Batch
    """The whole mini-batch it belongs to (for loss shares other than the token share)."""
    token_share: float
    """Its response tokens over the mini-batch's (``response_mask`` sums): the weight
    of its token means in the mini-batch's token means."""


class MicroBatchLoss(NamedTuple):
    """What a loss callback returns for one micro-batch."""

    loss: torch.Tensor
    """Scalar: the micro-batch's loss, aggregated over its own rows."""
    weight: float
    """The loss's share of the mini-batch's loss: ``weight * loss`` is backpropagated,
    so the micro-batches' gradients sum to the mini-batch loss's gradient."""
    stats: dict[str, float]
    """Numbers to log, each already weighted by the micro-batch's share (they are summed
    over a mini-batch's micro-batches, then averaged over the mini-batches)."""


MicroBatchLossFunction = Callable[[MicroBatch], MicroBatchLoss]


class UpdateResult(NamedTuple):
    """What `run_update` did."""

    stats: dict[str, float]
    """Each logged number averaged over the update's optimizer steps, with the gradient
    norm before clipping under the name the caller chose."""
    optimizer_steps: int


def shuffled_mini_batches(batch: Batch, update: UpdateConfig, step: int, epoch: int,
                          mini_batch_rows: int) -> list[Batch]:
    """The rows of `batch` in epoch `epoch`'s order (seeded by ``shuffle_seed``, the
    step and the epoch), cut into mini-batches of `mini_batch_rows` rows."""
    seed = update.shuffle_seed + 1000 * step + epoch
    order = torch.randperm(batch.size, generator=torch.Generator().manual_seed(seed))
    return batch.select(order).split_by_size(mini_batch_rows)


def token_share(micro_batch: Batch, mini_batch: Batch) -> float:
    """The micro-batch's response tokens over the mini-batch's (at least one token)."""
    mini_batch_tokens = mini_batch.tensors[Column.RESPONSE_MASK].sum().clamp(min=1.0)
    return float(micro_batch.tensors[Column.RESPONSE_MASK].sum() / mini_batch_tokens)


def run_update(
    optimization: Optimization, batch: Batch, update: UpdateConfig, step: int, loss: MicroBatchLossFunction, *,
    mini_batch_rows: int | None = None, micro_batch_order: Callable[[Batch], torch.Tensor] | None = None,
    grad_norm_name: str = "train/grad_norm", group_count: Callable[[int], int] | None = None,
) -> UpdateResult:
    """``update.ppo_epochs`` passes over `batch` in shuffled mini-batches, one optimizer
    step each, the gradient accumulated over micro-batches of ``update.micro_batch_size``
    rows or, with ``update.max_tokens_per_micro_batch``, of at most that many padded
    tokens (see the module docstring).

    Args:
        batch: the rows this process trains on, on the model's device; needs a
            ``response_mask`` [N, R] column.
        step: the training step (seeds the shuffle).
        loss: the role's loss of one micro-batch.
        mini_batch_rows: rows per mini-batch here (default ``update.mini_batch_size``;
            a trainer rank takes its share of it).
        micro_batch_order: reorders each mini-batch's rows before it is cut into
            micro-batches (the gradient does not depend on it; the work may). Default:
            the mini-batch's order, or `by_length` under a token budget.
        grad_norm_name: the name the gradient norm is logged under.
        group_count: this rank's number of micro-batches of a mini-batch -> the most of
            any rank (None: one rank); the rank runs padding up to it (module docstring).
    """
    totals: dict[str, float] = {}
    steps = 0
    for epoch in range(update.ppo_epochs):
        for mini in shuffled_mini_batches(batch, update, step, epoch, mini_batch_rows or update.mini_batch_size):
            stats = accumulate_gradient(optimization, mini, update.micro_batch_size, loss, micro_batch_order,
                                        update.max_tokens_per_micro_batch, group_count)
            stats[grad_norm_name] = optimization.step()
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
            steps += 1
    return UpdateResult({name: value / steps for name, value in totals.items()}, steps)


def accumulate_gradient(
    optimization: Optimization, mini: Batch, micro_batch_size: int, loss: MicroBatchLossFunction,
    micro_batch_order: Callable[[Batch], torch.Tensor] | None = None, max_tokens: int | None = None,
    group_count: Callable[[int], int] | None = None,
) -> dict[str, float]:
    """Sets the model's gradient to the mini-batch loss's, one micro-batch's backward at
    a time; returns the logged numbers summed over the micro-batches. The micro-batches
    are `micro_batch_size` rows or, with `max_tokens`, at most that many padded tokens
    (roles.micro_batches.token_budget_split; rows `by_length` unless `micro_batch_order`).
    With `group_count`, padding micro-batches follow up to the group's most."""
    optimization.optimizer.zero_grad(set_to_none=True)
    if micro_batch_order is None and max_tokens is not None:
        micro_batch_order = by_length
    ordered = mini.select(micro_batch_order(mini)) if micro_batch_order is not None else mini
    sums: dict[str, float] = {}
    micros = micro_batches(ordered, micro_batch_size, max_tokens)
    for micro in micros:
        result = loss(MicroBatch(micro, mini, token_share(micro, mini)))
        (result.loss * result.weight).backward()
        for name, value in result.stats.items():
            sums[name] = sums.get(name, 0.0) + value
    padding = group_count(len(micros)) - len(micros) if group_count is not None else 0
    for _ in range(padding):  # the collectives of the forwards and backwards other ranks still run
        result = loss(MicroBatch(ordered.select(slice(0, 1)), mini, 0.0))
        (result.loss * 0.0).backward()  # its stats are left out: it is not part of the mini-batch
    return sums
