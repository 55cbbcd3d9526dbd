"""Micro-batches by rows or by a token budget: padding share and the trainer's time per
mini-batch, on one rollout batch with a realistic length spread.

The batch (synthetic, seeded): ``--rows`` rows; prompts of uniform length in
[16, 64] tokens; responses of lognormal length (median 60, sigma 0.7: the 5th and 95th
percentiles are ~10x apart, like sampled answers of a reasoning task), clipped to
[8, 384]. Token ids are random; the model is a randomly initialised Qwen2 (4 layers,
hidden 128, vocabulary 512), big enough that a pass takes measurable time on a CPU.

Three ways to cut the mini-batch into micro-batches, each run as the trainer runs it
(roles.update.accumulate_gradient with the PPO loss over roles.logprobs.batch_logprobs,
which trims each micro-batch's padding to its widest prompt and longest response):

(a) ``rows``: ``--micro-batch-size`` rows in arrival order (the no-gradient passes
    before this change, and any trainer that does not sort);
(b) ``sorted rows``: the same, rows sorted by length (the trainer before this change);
(c) ``token budget``: rows sorted by length, ``max_tokens_per_micro_batch`` padded tokens
    at most (default: the mean padded size of (b)'s micro-batches, rounded up to 64: the
    same work per forward on average, and a peak of activation memory below (b)'s,
    whose micro-batch of the longest rows is the largest).

Measured in one run, interleaved (a, b, c, a, b, c, ...), after one warm-up round:
the padding share (padded tokens the forwards process that are no token of any row),
the forward+backward time of the whole mini-batch (gradient accumulation, no optimizer
step) and the no-gradient log-prob pass's time (roles.logprobs.rollout_logprobs), each
the median over ``--repeats``. Target (issue 18): >= 1.5x faster trainer passes where
padding is over 40%. Prints a table and, last, one JSON line.

    python benchmarks/token_batches.py [--rows 64 --micro-batch-size 8 --repeats 5 --max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import machine  # noqa: E402
from protocols.batch import Batch  # noqa: E402
from roles.algorithms import compute_policy_loss, micro_batch_weight  # noqa: E402
from roles.algorithms.policy_loss import PolicyLossConfig  # noqa: E402
from roles.logprobs import batch_logprobs, rollout_logprobs  # noqa: E402
from roles.micro_batches import by_length, micro_batches, padded_tokens  # noqa: E402
from roles.update import MicroBatch, MicroBatchLoss, OptimConfig, Optimization, accumulate_gradient  # noqa: E402

VOCAB = 512


class Grouping(NamedTuple):
    """One way to cut the mini-batch: its rows' order and the micro-batch rule."""

    name: str
    sort: bool
    max_tokens: int | None


def synthetic_batch(rows: int, seed: int) -> Batch:
    """Rollout rows (see the module docstring), left-padded prompts and right-padded
    responses, with the columns the PPO loss reads."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(16, 65, (rows,), generator=generator)
    normal = torch.randn(rows, generator=generator)
    response_lengths = torch.exp(torch.log(torch.tensor(60.0)) + 0.7 * normal).round().clamp(8, 384).long()
    prompt_width, response_width = int(prompt_lengths.max()), int(response_lengths.max())
    columns = torch.arange(prompt_width)
    prompt_mask = (columns >= prompt_width - prompt_lengths[:, None]).long()
    response_mask = (torch.arange(response_width) < response_lengths[:, None]).float()
    prompt_ids = torch.randint(3, VOCAB, (rows, prompt_width), generator=generator) * prompt_mask
    response_ids = torch.randint(3, VOCAB, (rows, response_width), generator=generator) * response_mask.long()
    old_logprobs = (-6.0 - torch.rand(rows, response_width, generator=generator)) * response_mask
    advantages = torch.randn(rows, 1, generator=generator).expand(rows, response_width) * response_mask
    return Batch(tensors={"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
                          "response_mask": response_mask, "old_logprobs": old_logprobs, "advantages": advantages})


def random_model() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).train()


def ppo_loss(model: torch.nn.Module, losses: PolicyLossConfig):  # type: ignore[no-untyped-def]
    """The trainer's micro-batch loss, less the parts this comparison does not need (KL, entropy bonus)."""
    def loss(micro: MicroBatch) -> MicroBatchLoss:
        t = micro.batch.tensors
        logprobs, _ = batch_logprobs(model, micro.batch, temperature=1.0, with_entropy=True)
        policy = compute_policy_loss(losses, logprobs, t["old_logprobs"], t["advantages"], t["response_mask"])
        weight = micro_batch_weight(losses.loss_agg_mode, t["response_mask"], micro.mini_batch.tensors["response_mask"])
        return MicroBatchLoss(policy.loss, weight, {"loss": weight * float(policy.loss.detach())})
    return loss


def cut(batch: Batch, grouping: Grouping, micro_batch_size: int) -> list[Batch]:
    ordered = batch.select(by_length(batch)) if grouping.sort else batch
    return micro_batches(ordered, micro_batch_size, grouping.max_tokens)


def padding_share(pieces: list[Batch]) -> float:
    real = sum(float((p.tensors["prompt_mask"] > 0).sum() + (p.tensors["response_mask"] > 0).sum()) for p in pieces)
    padded = sum(padded_tokens(piece) for piece in pieces)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rows of the mini-batch")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="rows per micro-batch of (a) and (b)")
    parser.add_argument("--max-tokens", type=int, help="the budget of (c) (default: (b)'s mean micro-batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    batch = synthetic_batch(args.rows, args.seed)
    sorted_rows = cut(batch, Grouping("", True, None), args.micro_batch_size)
    mean_padded = sum(padded_tokens(piece) for piece in sorted_rows) / len(sorted_rows)
    budget = args.max_tokens or 64 * math.ceil(mean_padded / 64)
    groupings = [Grouping("rows", False, None), Grouping("sorted rows", True, None), Grouping("token budget", True, budget)]
    model = random_model()
    optimization = Optimization.build(model, OptimConfig())
    loss = ppo_loss(model, PolicyLossConfig())
    update_s: dict[str, list[float]] = {g.name: [] for g in groupings}
    logprob_s: dict[str, list[float]] = {g.name: [] for g in groupings}
    for repeat in range(args.repeats + 1):  # round 0 warms up
        for grouping in groupings:
            order = by_length if grouping.sort else (lambda mini: torch.arange(mini.size))
            started = time.perf_counter()
            accumulate_gradient(optimization, batch, args.micro_batch_size, loss, order, grouping.max_tokens)
            middle = time.perf_counter()
            # rollout_logprobs sorts only under a budget: (b) gets its rows sorted here
            rows = batch.select(by_length(batch)) if grouping.sort and grouping.max_tokens is None else batch
            rollout_logprobs(model, rows, 1.0, args.micro_batch_size, "cpu", None, grouping.max_tokens)
            ended = time.perf_counter()
            if repeat:
                update_s[grouping.name].append(middle - started)
                logprob_s[grouping.name].append(ended - middle)
    lengths = (batch.tensors["response_mask"] > 0).sum(dim=1).float()
    print(f"# token batches  {time.strftime('%Y-%m-%d %H:%M')}  {machine()}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}")
    print(f"# {args.rows} rows; response tokens p5 {lengths.quantile(0.05):.0f}, median {lengths.median():.0f}, "
          f"p95 {lengths.quantile(0.95):.0f}, max {lengths.max():.0f}; micro-batch {args.micro_batch_size} rows "
          f"or {budget} padded tokens; medians of {args.repeats}")
    print(f"\n{'micro-batches':<16}{'count':>7}{'padded tok':>12}{'padding':>9}{'update s':>10}{'logprob s':>11}")
    summary: dict[str, float | int] = {"rows": args.rows, "max_tokens": budget}
    medians: dict[str, float] = {}
    for grouping, key in zip(groupings, ("rows", "sorted", "budget")):
        pieces = cut(batch, grouping, args.micro_batch_size)
        share = padding_share(pieces)
        medians[key] = statistics.median(update_s[grouping.name])
        logprob = statistics.median(logprob_s[grouping.name])
        print(f"{grouping.name:<16}{len(pieces):>7}{sum(padded_tokens(p) for p in pieces):>12}{100 * share:>8.1f}%"
              f"{medians[key]:>10.3f}{logprob:>11.3f}")
        summary[f"padding_{key}"] = round(share, 4)
        summary[f"update_s_{key}"] = round(medians[key], 4)
        summary[f"logprob_s_{key}"] = round(logprob, 4)
    summary["speedup_rows_over_budget"] = round(medians["rows"] / medians["budget"], 3)
    summary["speedup_sorted_over_budget"] = round(medians["sorted"] / medians["budget"], 3)
    print(f"\nupdate speed-up of the token budget: {summary['speedup_rows_over_budget']}x over rows in arrival order "
          f"(padding {100 * summary['padding_rows']:.0f}%; target >= 1.5x where padding > 40%), "
          f"{summary['speedup_sorted_over_budget']}x over sorted rows")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
