"""`troupe eval MODEL_DIR_OR_RUN --data FILE [--n K] [--temperature T]`: evaluate a local
Hugging Face model, or a run's latest checkpoint, on a held-out set (launch.offline_eval).

Prints a table, writes ``summary.json`` (settings and every number) and ``samples.jsonl``
(every sample: prompt, response, extracted answer, ground truth, score, weights version).

``troupe eval RUN_DIR --now`` instead asks a running run's evaluator role for an
evaluation now, with the weights the generators hold (an on-demand evaluation, logged
like the scheduled ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.run_dir import RunDir

TABLE = ("accuracy", "correctness", "format", "reward", "pass@*", "maj@*", "mean@*", "distinct_2_words_within", "distinct_2_tokens_across",
         "ngram_entropy_2_words_across", "seq_rep_2_tokens", "self_bleu_words_within", "self_bleu_words_across",
         "compression_ratio_across")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL_DIR_OR_RUN", help="a Hugging Face model directory or a run directory")
    parser.add_argument("--data", type=Path, help="held-out prompts (JSONL or Parquet: prompt, ground_truth, data_source)")
    parser.add_argument("--now", action="store_true", help="ask the evaluator role of a running run to evaluate now")
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (pass@k, maj@k need n >= k; default 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy; default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--step", type=int, help="a run's checkpoint step (default: the newest)")
    parser.add_argument("--reward", help="reward for every row: arithmetic, gsm8k, gsm8k-strict, gsm8k-flexible, math, code "
                                         "(default for a run: its reward role's settings)")
    parser.add_argument("--rewards", type=Path, help="a YAML roles.rewards config (by_data_source, default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--correct-at", type=float, default=1.0, help="a response is correct at this score or above, for "
                                                                       "rewards without a correctness term (default 1)")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN/eval/cli_step_N, or eval-<model name>)")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from launch.offline_eval import (
        EvalSetupError,
        evaluate_offline,
        load_policy,
        rewards_config,
        write_results,
    )
    from roles.evaluator import HeldoutConfig
    from roles.generation import SamplingParams

    console = Console()
    if args.now:
        return evaluate_live(args.model, console)
    if args.data is None:
        console.print("troupe eval: --data FILE is required (or --now for a running run's evaluator)")
        return 2
    if not args.data.exists():
        console.print(f"troupe eval: {args.data} does not exist")
        return 2
    try:
        temperature = {"temperature": 1.0, "top_k": 1} if args.temperature == 0 else {"temperature": args.temperature}
        sampling = SamplingParams(n=args.n, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed, **temperature)
        config = HeldoutConfig(sampling=sampling, correct_at=args.correct_at)
        policy = load_policy(args.model, args.step)
        rewards = rewards_config(policy.run_dir, args.reward, args.rewards)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"sampling {args.n} per prompt", total=None)
            numbers, samples = evaluate_offline(policy, args.data, sampling, rewards, config,
                                                progress=lambda done, total: progress.update(task, completed=done, total=total),
                                                device=args.device)
    except (EvalSetupError, ValidationError, ValueError) as error:
        console.print(f"troupe eval: {error}")
        return 2
    out = args.out or (RunDir(policy.run_dir).evaluations / f"cli_step_{policy.step}" if policy.run_dir else Path(f"eval-{policy.name}"))
    summary, dump = write_results(out, policy, args.data, sampling, numbers, samples)
    table = Table(title=f"{policy.name} on {args.data.name}: {int(numbers['eval/prompts'])} prompts x {args.n}")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in table_names(numbers):
        low, high = numbers.get(f"{name}_ci_low"), numbers.get(f"{name}_ci_high")
        table.add_row(name.removeprefix("eval/"), f"{numbers[name]:.4f}",
                      f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")
    console.print(table)
    console.print(f"every number: {summary}\nevery sample: {dump}")
    return 0


def table_names(numbers: dict[str, float]) -> list[str]:
    """The numbers the table shows, in TABLE's order (``pass@*``: every k, ascending)."""
    names = []
    for pattern in TABLE:
        if pattern.endswith("*"):
            found = [n for n in numbers if n.startswith(f"eval/{pattern[:-1]}") and "_ci_" not in n]
            names += sorted(found, key=lambda n: int(n.rsplit("@", 1)[1]))
        elif f"eval/{pattern}" in numbers:
            names.append(f"eval/{pattern}")
    return names


def evaluate_live(run_dir: Path, console: object) -> int:
    """Send `Evaluate(step)` to the run's evaluator role and print what it logged."""
    import asyncio
    import json

    from launch.run import ask_ready_role
    from protocols.rl import Evaluate
    from roles.metrics import read_metrics

    info_path = RunDir(run_dir).registry_file
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info.get("state") != "running":
        print(f"troupe eval --now: {run_dir} is not a running run (state: {info.get('state', 'no registry.json')})")
        return 2
    steps = [r["step"] for r in read_metrics(run_dir) if "train/reward" in r]
    step = steps[-1] if steps else 0
    reply = asyncio.run(ask_ready_role(run_dir, "evaluator", Evaluate(step), timeout=1800))
    for name in table_names(reply.values):
        print(f"{name}: {reply.values[name]:.4f}")
    print(f"step {reply.step}: every number in {RunDir(run_dir).metrics}, every sample in {RunDir(run_dir).eval_samples(reply.step)}")
    return 0
