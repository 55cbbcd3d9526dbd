"""Full fine-tuning versus a LoRA adapter (r = 16, every linear layer) on the same real
model, in one run: the trainer's peak memory and step time, and the weight sync's
bytes and seconds, plus the generator's sampling speed with the adapter merged into
its weights and unmerged.

Each set-up runs real role processes (roles.trainer, roles.generator, the registry)
on SmolLM2-135M-Instruct (examples/smollm2/data/model): the trainer takes `--steps`
updates of one mini-batch of the demo's arithmetic prompts with sampled-looking
responses, and publishes after each to one generator. Peak memory is the trainer
process's high-water resident set (VmHWM), read after its last step; step time and
sync seconds are medians over the steps after the first (which warms up the allocator
and, for the channel, forms the broadcast group); sync seconds are the driver's
`PublishWeights` until the one generator acknowledged (for LoRA that includes its
merge). Sampling speed is tokens per second of one `Generate` of 8 prompts x 32 new
tokens after the last version, median of 3; with LoRA, a second generator that runs
the adapter unmerged joins then (late: its base from disk, the adapter over the
channel) and is measured the same way. A third set-up repeats LoRA with the one timed
generator running the adapter unmerged (its sync copies the adapter into peft's modules: no merge).
"loaded MB" is the trainer's resident set once its model is loaded, before the first
step; "pause s" is the generator's time with generation paused for a version.

The last line is JSON: LoRA over full for sync bytes, sync seconds (merging generator,
and unmerged), peak memory and step time (targets, issue 22: < 0.05, < 0.20, < 0.60),
and merged over unmerged sampling speed.

    python benchmarks/lora.py [--steps 4] [--rows 8] [--micro-batch 4] [--r 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols.batch import Batch  # noqa: E402
from protocols.rl import Generate, Rollouts, Sampling, Train  # noqa: E402
from protocols.weights import PublishReport, PublishWeights  # noqa: E402
from runtime.actor import Actor, start_actor  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402
from runtime.spawn import ActorProcess, spawn_actor  # noqa: E402
from benchmarks.processes import stop_all  # noqa: E402

MODEL = ROOT / "examples" / "smollm2" / "data" / "model"
PROMPTS = ROOT / "examples" / "smollm2" / "data" / "arithmetic" / "train.jsonl"
BUILD = "python examples/smollm2/build.py --out examples/smollm2/data"
RESPONSE_TOKENS = 48
SAMPLING = Sampling(n=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=32, stop=(), seed=0, ignore_eos=True)


def training_batch(rows: int) -> tuple[Batch, Batch]:
    """(a Train batch of `rows` prompts of the demo with random responses, its prompts)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    lines = PROMPTS.read_text().splitlines()[:rows]
    texts = [tokenizer.apply_chat_template(json.loads(line)["messages"], add_generation_prompt=True, tokenize=False)
             for line in lines]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(map(len, prompts))
    prompt_ids = torch.full((rows, width), tokenizer.pad_token_id or 0, dtype=torch.long)
    prompt_mask = torch.zeros(rows, width, dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, width - len(ids):] = torch.tensor(ids)
        prompt_mask[row, width - len(ids):] = 1
    generator = torch.Generator().manual_seed(0)
    response_ids = torch.randint(100, tokenizer.vocab_size, (rows, RESPONSE_TOKENS), generator=generator)
    mask = torch.ones(rows, RESPONSE_TOKENS)
    advantages = torch.randn(rows, 1, generator=generator).expand(rows, RESPONSE_TOKENS).contiguous()
    batch = Batch(tensors={"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
                           "response_mask": mask, "advantages": advantages})
    return batch, Batch(columns={"prompt_ids": prompts})


def status_mb(process: ActorProcess, field: str) -> float:
    """A memory line of the process's /proc status (VmHWM: the peak resident set)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {process.pid}")


def peak_rss_mb(process: ActorProcess) -> float:
    return status_mb(process, "VmHWM")


def rss_mb(process: ActorProcess) -> float:
    return status_mb(process, "VmRSS")


async def measure(setup: str, lora: dict[str, Any] | None, modes: list[str], steps: int, rows: int, micro_batch: int,
                  run_dir: str) -> dict[str, Any]:
    """One set-up: registry, trainer, a generator loading each version in ``modes[0]``;
    `steps` updates, each published; then a generator for each further mode joins late,
    and every generator's sampling speed is measured."""
    settings = RuntimeSettings(log_messages=False, heartbeat_timeout_s=60.0)
    model = {"model": str(MODEL), "cpu_threads": 2}
    channel = {"bucket_mb": 256, "transfer_timeout_s": 300, "commit_timeout_s": 300}
    trainer_config = {**model, "channel": channel, "optim": {"lr": 1e-5, "warmup_steps": 0},
                      "update": {"mini_batch_size": rows, "micro_batch_size": micro_batch}, **({"lora": lora} if lora else {})}
    processes = [await spawn_actor("runtime.registry:Registry", "registry", settings=settings, run_dir=run_dir)]
    registry = processes[0].endpoint
    driver = Actor("driver", settings=settings)
    task = None
    try:
        trainer = await spawn_actor("roles.trainer:Trainer", "trainer-0", registry=registry, settings=settings,
                                    run_dir=run_dir, config=trainer_config, ready_timeout=600)
        processes.append(trainer)
        loaded_mb = rss_mb(trainer)

        async def start_generator(index: int, mode: str) -> None:
            config = {**model, "channel": channel, **({"lora": lora, "lora_mode": mode} if lora else {})}
            processes.append(await spawn_actor("roles.generator:Generator", f"generator-{index}", instance=index,
                                               registry=registry, settings=settings, run_dir=run_dir, config=config,
                                               ready_timeout=600))

        await start_generator(0, modes[0])  # one generator while syncs are timed, as for full fine-tuning
        task = await start_actor(driver, registry=registry)
        batch, prompts = training_batch(rows)
        step_s, sync_s, sent, pause = [], [], [], []
        for step in range(1, steps + 1):
            started = time.monotonic()
            await driver.ask("trainer-0", Train(batch, step=step, temperature=1.0, kl_coef=0.0, old_logprobs="current"),
                             timeout=900)
            step_s.append(time.monotonic() - started)
            started = time.monotonic()
            report: PublishReport = await driver.ask("trainer-0", PublishWeights(), timeout=900)
            sync_s.append(time.monotonic() - started)
            if len(report.committed) != 1:
                raise RuntimeError(f"{setup}: a generator did not load version {report.version}: {report}")
            sent.append(report.sent_bytes)
            pause.append(report.pause_s)
            print(f"  {setup} step {step}: train {step_s[-1]:.2f} s, sync {sync_s[-1]:.3f} s, "
                  f"{report.sent_bytes / 1e6:.1f} MB", flush=True)
        result: dict[str, Any] = {
            "setup": setup, "trainer_loaded_mb": loaded_mb, "trainer_peak_mb": peak_rss_mb(trainer),
            "step_s": statistics.median(step_s[1:] or step_s),
            "sync_s": statistics.median(sync_s[1:] or sync_s), "sync_bytes": statistics.median(sent),
            "pause_s": statistics.median(pause[1:] or pause),
        }
        for index, mode in enumerate(modes[1:], start=1):  # late joiners: base from disk, the adapter over the channel
            await start_generator(index, mode)
        for index, mode in enumerate(modes):
            rates = []
            for _ in range(3):
                rollouts: Rollouts = await driver.ask(f"generator-{index}", Generate(prompts, SAMPLING), timeout=900)
                rates.append(float(rollouts.batch.tensors["response_mask"].sum()) / rollouts.generate_s)
            result[f"sample_tokens_per_s_{mode}"] = statistics.median(rates)
        return result
    finally:
        await stop_all(driver, task, processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per forward and backward (both set-ups)")
    args = parser.parse_args()
    if not (MODEL / "config.json").exists() or not PROMPTS.exists():
        sys.exit(f"{MODEL.relative_to(ROOT)} is not built: {BUILD}")
    print(f"# {platform.node()} {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"SmolLM2-135M float32, {args.rows} rows x {RESPONSE_TOKENS} response tokens "
          f"(micro-batches of {args.micro_batch}), {args.steps} steps", flush=True)
    lora = {"r": args.r, "alpha": 2 * args.r, "target_modules": "all-linear"}
    setups = [("full", None, ["full"]), (f"lora r={args.r}", lora, ["merge", "unmerged"]),
              (f"lora r={args.r} unmerged", lora, ["unmerged"])]
    rows = []
    for setup, settings, modes in setups:
        with tempfile.TemporaryDirectory() as run_dir:
            rows.append(asyncio.run(measure(setup, settings, modes, args.steps, args.rows, args.micro_batch, run_dir)))
    full, adapter, unmerged = rows
    print(f"{'':<22}{'loaded MB':>10}{'peak MB':>10}{'step s':>9}{'sync MB':>10}{'sync s':>9}{'pause s':>9}  sample tok/s")
    for row in rows:
        rates = ", ".join(f"{key.rsplit('_', 1)[1]} {value:.1f}" for key, value in row.items() if key.startswith("sample_"))
        print(f"{row['setup']:<22}{row['trainer_loaded_mb']:>10.0f}{row['trainer_peak_mb']:>10.0f}{row['step_s']:>9.2f}"
              f"{row['sync_bytes'] / 1e6:>10.1f}"
              f"{row['sync_s']:>9.3f}{row['pause_s']:>9.3f}  {rates}")
    print(json.dumps({
        "sync_bytes_ratio": adapter["sync_bytes"] / full["sync_bytes"],
        "sync_s_ratio": adapter["sync_s"] / full["sync_s"],
        "sync_s_ratio_unmerged": unmerged["sync_s"] / full["sync_s"],
        "trainer_peak_memory_ratio": adapter["trainer_peak_mb"] / full["trainer_peak_mb"],
        "step_s_ratio": adapter["step_s"] / full["step_s"],
        "merged_over_unmerged_sampling": adapter["sample_tokens_per_s_merge"] / adapter["sample_tokens_per_s_unmerged"],
    }))


if __name__ == "__main__":
    main()
