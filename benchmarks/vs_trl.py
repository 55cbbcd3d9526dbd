"""troupe's GRPO against TRL's GRPOTrainer, on the same model, prompts and settings, in one run.

For each model (the arithmetic demo model of examples/arith, and SmolLM2-135M-Instruct
as a Hugging Face directory) the benchmark trains the same number of GRPO steps three
times: TRL's GRPOTrainer (its own process, torch's default threads: what a TRL user
runs), troupe `mode: sync` and troupe `mode: async` (each a `troupe launch` of a
topology written here: controller, generator, trainer and reward processes; no
reference, since the KL coefficient is 0). All three read one prompt file, in file
order, and grade with one reward function (`GRPOSettings.rewards`, built into a
`roles.rewards.RewardRouter` on both sides), so after the same step they have seen the
same prompts and the same number of samples.

Reported per variant: the median seconds per optimizer step after the first two
(warm-up), samples per second (rows trained per step / that median), the reward curve,
and the mean reward of the last fifth of the steps. Targets on 2 CPU cores: troupe sync
<= 0.8x TRL's step time, troupe async <= 0.5x, at equal reward after the same number of
samples. Prints a table and, last, one JSON line with the ratios.

    python benchmarks/vs_trl.py [--which both|arith|real] [--steps N] [--model DIR] [--quick]
                                [--repeats R] [--troupe-threads fill|one] [--set PATH=VALUE] [--keep]

Every setting both frameworks get is a field of `GRPOSettings`; benchmarks/trl_grpo.py
maps it onto GRPOConfig and `troupe_topology` onto the troupe roles. What cannot be
made equal is listed in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import REPO, ensure_data, launch, machine, metrics  # noqa: E402
from runtime.cores import usable_cpus  # noqa: E402

DEFAULT_REAL_MODEL = "examples/smollm2/data/model"
"""Where examples/smollm2/build.py writes SmolLM2-135M-Instruct as a Hugging Face directory."""
WARMUP_STEPS = 2
"""Steps left out of the step-time median (the first steps allocate and warm caches)."""
VARIANTS = ("trl", "sync", "async")
REAL_PROMPT_SUFFIX = " Give the final answer as a number at the end."
"""Appended to reasoning-gym's question, as examples/smollm2/build.py does."""
REAL_DATA_SOURCE = "reasoning_gym/basic_arithmetic"


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """Everything both frameworks are given; one GRPO step = one optimizer step over
    ``prompts_per_step x samples_per_prompt`` fresh samples."""

    model: str
    """Hugging Face model directory (policy and tokenizer)."""
    data: str
    """JSONL prompt file (troupe's roles/data.py format), read in file order."""
    steps: int
    """Optimizer steps."""
    prompts_per_step: int
    samples_per_prompt: int
    """Responses per prompt (TRL's num_generations, troupe's sampling.n)."""
    max_new_tokens: int
    learning_rate: float
    micro_batch_size: int
    """Rows per forward/backward (TRL's per_device_train_batch_size); gradients are
    accumulated over the step's batch."""
    rewards: dict[str, Any]
    """A roles.rewards.RewardsConfig: troupe's reward role and TRL's reward callable both build it."""
    temperature: float = 1.0
    kl_coef: float = 0.0
    """TRL's beta; 0 (no reference model on either side, troupe's kl.usage none)."""
    epochs: int = 1
    """Passes over each batch (TRL's num_iterations, troupe's ppo_epochs)."""
    clip_ratio: float = 0.2
    """PPO clip epsilon, both sides of 1 (inactive on-policy with one pass, set anyway)."""
    advantage_std_eps: float = 1e-4
    """Added to the group std before dividing (TRL's fixed 1e-4; troupe's default is 1e-6)."""
    grad_clip: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    dtype: str = "float32"
    """Weights, gradients and optimizer state on both sides, and sampling."""
    autocast: str | None = None
    """Mixed precision: None, or "bfloat16": TRL's bf16=True, which runs its training and
    its sampling under autocast (accelerate wraps the model's forward, and TRL's generation
    keeps that wrapper), and troupe's trainer and generator ``autocast``; the weights stay
    in `dtype` on both sides."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast must be None or 'bfloat16' (TRL's bf16), got {self.autocast!r}")
        if self.kl_coef != 0:
            raise ValueError("kl_coef must be 0: the benchmark runs neither framework with a reference model")
        if self.rows_per_step % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide prompts_per_step x samples_per_prompt "
                             f"= {self.rows_per_step}: TRL accumulates whole micro-batches into one step")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> GRPOSettings:
        fields = json.loads(text)
        fields["adam_betas"] = tuple(fields["adam_betas"])
        return cls(**fields)

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


# ---------------------------------------------------------------------- the workloads
def arith_settings(steps: int, tmp: Path, quick: bool) -> GRPOSettings:
    """The demo's model and train prompts (examples/arith-grpo.yaml's batch, learning rate
    and response length), the file written as shuffled passes over train.jsonl."""
    data = ensure_data()
    prompts = 8 if quick else 32
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    path = tmp / "arith-prompts.jsonl"
    write_passes(rows, steps * prompts, path)
    return GRPOSettings(model=str(data / "model"), data=str(path), steps=steps, prompts_per_step=prompts,
                       samples_per_prompt=8, max_new_tokens=6, learning_rate=4e-4, micro_batch_size=64,
                       rewards={"by_data_source": {"arith": {"type": "arithmetic"}}})


def real_settings(model: Path, steps: int, tmp: Path, quick: bool) -> GRPOSettings:
    """SmolLM2-135M-Instruct on reasoning-gym's basic_arithmetic (2 terms of 1-2 digits,
    + - *), chat prompts graded on the final number (roles.rewards ``final_number``): the
    task and batch of examples/smollm2-grpo.yaml, questions from a seed of their own."""
    try:
        import reasoning_gym
    except ImportError as error:
        raise SystemExit("the real workload needs reasoning-gym: pip install -e '.[real]'") from error
    prompts = 2 if quick else 8
    questions = reasoning_gym.create_dataset(
        "basic_arithmetic", seed=1, size=steps * prompts, min_terms=2, max_terms=2, min_digits=1, max_digits=2,
        operators=("+", "-", "*"), allow_parentheses=False, allow_negation=False,
    )
    rows = [{"messages": [{"role": "user", "content": item["question"] + REAL_PROMPT_SUFFIX}],
             "ground_truth": item["answer"], "data_source": REAL_DATA_SOURCE} for item in questions]
    path = tmp / "real-prompts.jsonl"
    write_passes(rows, steps * prompts, path)
    return GRPOSettings(model=str(model), data=str(path), steps=steps, prompts_per_step=prompts,
                        samples_per_prompt=4, max_new_tokens=16 if quick else 32, learning_rate=1e-5,
                        micro_batch_size=8, rewards={"by_data_source": {REAL_DATA_SOURCE: {"type": "final_number"}}})


def write_passes(rows: list[dict[str, Any]], count: int, path: Path) -> None:
    """`count` rows: passes over `rows`, each in a seeded random order."""
    out: list[dict[str, Any]] = []
    for number in range(-(-count // len(rows))):
        shuffled = list(rows)
        random.Random(number).shuffle(shuffled)
        out += shuffled
    path.write_text("".join(json.dumps(row) + "\n" for row in out[:count]))


# ---------------------------------------------------------------------- the runs
def troupe_topology(settings: GRPOSettings, mode: str, threads: str = "fill") -> dict[str, Any]:
    """Controller, generator, trainer and reward, with `settings`; no reference (KL 0).

    ``recompute_logprobs`` stays at troupe's default, ``auto``: with one optimizer step per
    batch the trainer takes its own detached log-probs as the old ones, with no extra
    forward pass, as TRL does. `threads`: see `role_threads`.
    """
    model = settings.model
    compute = role_threads(mode, threads)
    return {
        "name": f"vs-trl-{mode}",
        "runtime": {"heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 30.0},
        "start": "together",
        "roles": {
            "controller": {"entry": "controller", "ends_run": True, "restart": {"policy": "never"}, "config": {
                "tokenizer": model,
                "data": {"files": [settings.data], "shuffle": False},
                "steps": settings.steps,
                "prompts_per_step": settings.prompts_per_step,
                "sampling": {"n": settings.samples_per_prompt, "temperature": settings.temperature,
                             "max_new_tokens": settings.max_new_tokens},
                "advantage": {"type": "grpo", "eps": settings.advantage_std_eps},
                "kl": {"usage": "none"},
                "use_reference": False,
                "mode": mode,
                "tensorboard": False,  # TRL runs with report_to="none"
            }},
            "generator": {"entry": "generator", "config": {
                "model": model, "dtype": settings.dtype,
                "micro_batch": settings.rows_per_step,  # TRL generates the step's batch in one call
                **compute,
                **({"autocast": settings.autocast} if settings.autocast else {}),
            }},
            "trainer": {"entry": "trainer", "restart": {"policy": "never"}, "config": {
                "model": model, "dtype": settings.dtype, "seed": settings.seed, **compute,
                **({"autocast": settings.autocast} if settings.autocast else {}),
                "optim": {"lr": settings.learning_rate, "betas": list(settings.adam_betas),
                          "weight_decay": settings.weight_decay, "grad_clip": settings.grad_clip,
                          "warmup_steps": 0, "schedule": "constant"},
                "update": {"ppo_epochs": settings.epochs, "mini_batch_size": settings.rows_per_step,
                           "micro_batch_size": settings.micro_batch_size},
                "policy_loss": {"clip_ratio_low": settings.clip_ratio, "clip_ratio_high": settings.clip_ratio,
                                "loss_agg_mode": "token-mean"},
            }},
            "reward": {"entry": "reward", "config": {"rewards": settings.rewards}},
        },
    }


def role_threads(mode: str, threads: str) -> dict[str, int]:
    """The generator's and the trainer's ``cpu_threads``: ``fill`` gives each every core in
    sync mode (they take turns) and half of them in async mode (they run at once);
    ``default`` leaves troupe's own default."""
    if threads == "default":
        return {}
    cores = len(usable_cpus())
    return {"cpu_threads": cores if mode == "sync" else max(1, cores // 2)}


@dataclasses.dataclass
class Steps:
    """One variant's run: per optimizer step, its seconds, rows trained and mean reward."""

    seconds: list[float]
    rows: list[float]
    reward: list[float]
    wall_s: float
    """The whole run: process start, model loading, every step, shutdown."""
    note: str = ""
    """How the run used the machine (threads, optimizer)."""


def run_troupe(settings: GRPOSettings, mode: str, tmp: Path, extra: list[str], threads: str) -> Steps:
    import yaml

    topology = tmp / f"topology-{mode}.yaml"
    topology.write_text(yaml.safe_dump(troupe_topology(settings, mode, threads), sort_keys=False))
    run_dir = tmp / f"run-{mode}"
    wall = launch(run_dir, extra, topology=str(topology))
    trained = [record for record in metrics(run_dir) if "train/reward" in record]
    compute = role_threads(mode, threads).get("cpu_threads", "troupe's default")
    return Steps([r["timing/step_s"] for r in trained], [r["perf/samples_per_s"] * r["timing/step_s"] for r in trained],
                 [r["train/reward"] for r in trained], wall, f"generator and trainer torch threads: {compute} each")


def run_trl(settings: GRPOSettings, tmp: Path) -> Steps:
    settings_path, steps_path, log_path = tmp / "trl-settings.json", tmp / "trl-steps.jsonl", tmp / "trl.log"
    settings_path.write_text(settings.to_json())
    started = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trl_grpo.py"), str(settings_path), str(steps_path)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"the TRL run failed ({result.returncode}), {log_path}:\n{log_path.read_text()[-4000:]}")
    records = [json.loads(line) for line in steps_path.read_text().splitlines()]
    trained = [r for r in records if "step" in r]
    run = records[-1]
    return Steps([r["step_s"] for r in trained], [float(settings.rows_per_step)] * len(trained),
                 [r["reward"] for r in trained], wall, f"torch threads: {run['torch_threads']}, optimizer {run['config']['optim']}")


def run_variant(variant: str, settings: GRPOSettings, tmp: Path, extra: list[str], threads: str) -> Steps:
    folder = tmp / variant
    folder.mkdir()
    return run_trl(settings, folder) if variant == "trl" else run_troupe(settings, variant, folder, extra, threads)


# ---------------------------------------------------------------------- the numbers
def reward_window(steps: int) -> int:
    """Steps whose rewards are averaged for "reward first" and "reward last": a fifth of the run."""
    return max(1, steps // 5)


@dataclasses.dataclass(frozen=True)
class Summary:
    """One variant's numbers, over its repetitions."""

    step_s: float
    """Median seconds per optimizer step, warm-up steps left out."""
    samples_per_s: float
    reward_first: float
    reward_last: float
    """Mean reward of the last `reward_window` steps."""
    samples: float
    """Rows trained in the whole run."""
    curve: list[float]
    """Mean reward per block of steps."""
    wall_s: float
    note: str
    """How the run used the machine (threads, optimizer)."""


def summarize(runs: list[Steps], window: int, blocks: int) -> Summary:
    """Pools the steps after warm-up of every repetition; rewards are averaged step by step
    over the repetitions (each saw the same prompts)."""
    measured = [s for run in runs for s in run.seconds[min(WARMUP_STEPS, len(run.seconds) - 1):]]
    rows = [r for run in runs for r in run.rows[min(WARMUP_STEPS, len(run.rows) - 1):]]
    steps = min(len(run.reward) for run in runs)
    reward = [statistics.fmean(run.reward[step] for run in runs) for step in range(steps)]
    step_s = statistics.median(measured)
    size = -(-steps // blocks)
    return Summary(step_s=step_s, samples_per_s=statistics.fmean(rows) / step_s,
                   reward_first=statistics.fmean(reward[:window]), reward_last=statistics.fmean(reward[-window:]),
                   samples=statistics.fmean(sum(run.rows) for run in runs),
                   curve=[statistics.fmean(reward[i:i + size]) for i in range(0, steps, size)],
                   wall_s=statistics.fmean(run.wall_s for run in runs), note=runs[-1].note)


def compare(name: str, settings: GRPOSettings, repeats: int, extra: list[str], threads: str,
            tmp: Path) -> dict[str, Summary]:
    """Every variant `repeats` times, the order rotated each repetition."""
    runs: dict[str, list[Steps]] = {variant: [] for variant in VARIANTS}
    for repeat in range(repeats):
        order = VARIANTS[repeat % len(VARIANTS):] + VARIANTS[:repeat % len(VARIANTS)]
        for variant in order:
            print(f"[{name}] repetition {repeat + 1}/{repeats}: {variant} ...", file=sys.stderr, flush=True)
            folder = tmp / f"{name}-{repeat}"
            folder.mkdir(exist_ok=True)
            runs[variant].append(run_variant(variant, settings, folder, extra, threads))
    window = reward_window(settings.steps)
    return {variant: summarize(results, window, blocks=min(5, settings.steps)) for variant, results in runs.items()}


def report(name: str, settings: GRPOSettings, results: dict[str, Summary]) -> dict[str, float]:
    trl = results["trl"]
    window = reward_window(settings.steps)
    precision = settings.dtype + (f" with {settings.autocast} autocast" if settings.autocast else "")
    print(f"\n## {name}: {settings.model}")
    print(f"{settings.steps} steps x {settings.prompts_per_step} prompts x {settings.samples_per_prompt} samples, "
          f"max {settings.max_new_tokens} new tokens, lr {settings.learning_rate:g}, micro-batch {settings.micro_batch_size}, "
          f"KL {settings.kl_coef:g}, {precision}; "
          f"step time: median of steps {WARMUP_STEPS + 1}-{settings.steps}; "
          f"reward: mean of the first / last {window} steps\n")
    print(f"{'variant':<8}{'step s':>9}{'vs TRL':>8}{'samples/s':>11}{'samples':>9}{'reward first':>14}"
          f"{'reward last':>13}{'wall s':>9}  reward curve")
    for variant, r in results.items():
        curve = " ".join(f"{value:.2f}" for value in r.curve)
        print(f"{variant:<8}{r.step_s:>9.2f}{r.step_s / trl.step_s:>8.2f}{r.samples_per_s:>11.1f}{r.samples:>9.0f}"
              f"{r.reward_first:>14.3f}{r.reward_last:>13.3f}{r.wall_s:>9.0f}  {curve}")
    for variant, r in results.items():
        print(f"  {variant}: {r.note}")
    ratios = {"sync": results["sync"].step_s / trl.step_s, "async": results["async"].step_s / trl.step_s}
    for mode, target in (("sync", 0.8), ("async", 0.5)):
        verdict = "met" if ratios[mode] <= target else "MISSED"
        print(f"troupe {mode} / TRL step time: {ratios[mode]:.2f} (target <= {target}: {verdict}); reward last "
              f"{results[mode].reward_last:.3f} vs TRL {trl.reward_last:.3f}")
    return {
        f"{name}_sync_over_trl_step_s": round(ratios["sync"], 3),
        f"{name}_async_over_trl_step_s": round(ratios["async"], 3),
        **{f"{name}_reward_last_{variant}": round(r.reward_last, 4) for variant, r in results.items()},
    }


def real_model(path: str | None) -> Path | None:
    """The real model's directory; None (with a note) when the default one is not built."""
    model = Path(path or DEFAULT_REAL_MODEL)
    model = model if model.is_absolute() else REPO / model
    if (model / "config.json").is_file():
        return model
    message = (f"no Hugging Face model at {model}: build it with `python examples/smollm2/build.py` "
               "or pass --model DIR (SmolLM2-135M-Instruct saved with save_pretrained)")
    if path is not None:
        raise SystemExit(message)
    print(f"skipping the real model: {message}", file=sys.stderr)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", choices=("both", "arith", "real"), default="both")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: arith 100, real 20; --quick 3)")
    parser.add_argument("--model", help=f"the real model's directory (default {DEFAULT_REAL_MODEL})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, smaller batches")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved (default 1)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="PATH=VALUE",
                        help="a topology override for both troupe runs, e.g. roles.trainer.config.cpu_threads=2")
    parser.add_argument("--troupe-threads", choices=("fill", "default"), default="fill",
                        help="fill: troupe's generator and trainer get every core in sync mode, half each in async "
                             "mode; default: their cpu_threads default")
    parser.add_argument("--autocast", choices=("none", "bfloat16"), default="none",
                        help="mixed precision of training on both sides: TRL's bf16=True, troupe's trainer autocast "
                             "(default none: float32 throughout)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories and logs (the path is printed)")
    args = parser.parse_args()
    if args.steps is not None and args.steps < WARMUP_STEPS + 1:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 1} (the first {WARMUP_STEPS} are warm-up)")
    model = real_model(args.model) if args.which in ("both", "real") else None
    ratios: dict[str, float] = {}
    kept = contextlib.nullcontext(tempfile.mkdtemp(prefix="vs-trl-")) if args.keep else None
    with kept or tempfile.TemporaryDirectory(prefix="vs-trl-") as folder:
        tmp = Path(folder)
        if args.keep:
            print(f"run directories and logs: {tmp}", file=sys.stderr)
        workloads: list[tuple[str, GRPOSettings]] = []
        if args.which in ("both", "arith"):
            workloads.append(("arith", arith_settings(args.steps or (3 if args.quick else 100), tmp, args.quick)))
        if model is not None:
            workloads.append(("real", real_settings(model, args.steps or (3 if args.quick else 20), tmp, args.quick)))
        autocast = None if args.autocast == "none" else args.autocast
        workloads = [(name, dataclasses.replace(settings, autocast=autocast)) for name, settings in workloads]
        print(f"# troupe vs TRL GRPO  {time.strftime('%Y-%m-%d')}  {machine()}  troupe threads: {args.troupe_threads}  "
              f"{' '.join(args.extra)}")
        for name, settings in workloads:
            results = compare(name, settings, args.repeats, args.extra, args.troupe_threads, tmp)
            ratios.update(report(name, settings, results))
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
