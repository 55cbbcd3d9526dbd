"""`make demo-real`: GRPO on a real pretrained chat model, on the CPU, measured before and after.

Builds SmolLM2-135M-Instruct and reasoning-gym's arithmetic if needed
(examples/smollm2/build.py), trains it with GRPO on examples/smollm2-grpo.yaml through
the Python API (`launch.Run`: every role its own process), then prints the held-out
accuracy the evaluator role measured before the first step and after the last, and
the paired difference over the same held-out prompts with its 95% interval.

    python examples/smollm2/demo.py [--topology examples/smollm2-grpo.yaml] [--set KEY=VALUE ...]

Why a paired difference: both evaluations answer the same held-out prompts, so each
prompt's accuracy after training is compared with its own accuracy before
(`roles.evaluation.accuracy.paired_bootstrap`, resampling prompts); the variation
between easy and hard prompts cancels, and the interval is that of the rise itself.
The rise is significant at 95% when the interval lies above zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: `roles` and `examples` live at the repository root
    sys.path.insert(0, str(REPO))

from examples.launching import run_example  # noqa: E402
from roles.evaluation.accuracy import PairedDifference, paired_bootstrap  # noqa: E402
from roles.metrics import read_metrics  # noqa: E402
from runtime.run_dir import RunDir  # noqa: E402

DATA = REPO / "examples" / "smollm2" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default=str(REPO / "examples" / "smollm2-grpo.yaml"))
    parser.add_argument("--run-dir", default=None, help="default: runs/smollm2-<time>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a topology override, as `troupe launch --set` (e.g. roles.controller.config.steps=10)")
    args = parser.parse_args()

    started = time.monotonic()
    from examples.smollm2.build import BuildError, build

    try:
        build(DATA)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    built = time.monotonic()
    run_dir = Path(args.run_dir or REPO / "runs" / f"smollm2-{time.strftime('%Y%m%d-%H%M%S')}")
    code = run_example(args.topology, args.set, run_dir)
    finished = time.monotonic()
    if code != 0:
        return code
    return report(run_dir, build_minutes=(built - started) / 60, run_minutes=(finished - built) / 60)


def per_prompt_accuracy(path: Path, correct_at: float = 1.0) -> dict[str, float]:
    """Share of correct samples per held-out prompt in one evaluation dump (``eval/step_N.jsonl``)."""
    correct: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        sample = json.loads(line)
        key = json.dumps([sample["prompt"], sample["ground_truth"]])
        correct.setdefault(key, []).append(1.0 if sample["score"] >= correct_at else 0.0)
    return {key: sum(values) / len(values) for key, values in correct.items()}


def paired_rise(before: Path, after: Path) -> PairedDifference:
    """The paired bootstrap of per-prompt accuracy, after minus before, over the prompts both answered."""
    first, second = per_prompt_accuracy(before), per_prompt_accuracy(after)
    if first.keys() != second.keys():
        raise ValueError(f"{before} and {after} answer different prompts ({len(first)} and {len(second)}); "
                         "they must come from the same held-out file")
    prompts = sorted(first)
    return paired_bootstrap([first[p] for p in prompts], [second[p] for p in prompts], resamples=10_000)


class BeforeAndAfter(NamedTuple):
    """A finished run's records, as the demos report them."""

    files: RunDir
    evaluations: list[dict[str, Any]]
    """Every held-out evaluation, by step."""
    steps: list[dict[str, Any]]
    """Every training step's record."""
    rise: PairedDifference
    """The first evaluation to the last, paired by prompt."""
    significant: str
    """Whether `rise`'s interval is above zero, in words."""


def before_and_after(run_dir: Path) -> BeforeAndAfter | None:
    """The run's records and the paired rise of held-out accuracy; None (said on stderr)
    without two evaluations and a step."""
    files = RunDir(run_dir)
    records: list[dict[str, Any]] = read_metrics(run_dir)
    evaluations = sorted((r for r in records if "eval/accuracy" in r), key=lambda r: r["step"])
    steps = [r for r in records if "train/reward" in r]
    if len(evaluations) < 2 or not steps:
        print(f"no before/after evaluation in {files.metrics}", file=sys.stderr)
        return None
    rise = paired_rise(files.eval_samples(evaluations[0]["step"]), files.eval_samples(evaluations[-1]["step"]))
    significant = "significant: the interval is above zero" if rise.low > 0 else "NOT significant: the interval reaches zero"
    return BeforeAndAfter(files, evaluations, steps, rise, significant)


def report(run_dir: Path, build_minutes: float, run_minutes: float) -> int:
    found = before_and_after(run_dir)
    if found is None:
        return 1
    files, evaluations, steps, rise, significant = found
    before, after = evaluations[0], evaluations[-1]
    print()
    print(f"run directory: {run_dir}")
    print(f"model: SmolLM2-135M-Instruct; task: reasoning-gym basic_arithmetic, {rise.pairs} held-out prompts "
          f"x {int(after['eval/samples']) // rise.pairs} samples at temperature 1")
    print(f"steps: {len(steps)}; train/reward {steps[0]['train/reward']:.3f} (step 1) -> "
          f"{steps[-1]['train/reward']:.3f} (step {steps[-1]['step']}); "
          f"response length {steps[0]['train/response_length']:.1f} -> {steps[-1]['train/response_length']:.1f} tokens")
    print(f"held-out accuracy: before {before['eval/accuracy']:.3f} (step {before['step']}) -> "
          f"after {after['eval/accuracy']:.3f} (step {after['step']})")
    print(f"paired difference: {rise.difference:+.3f} absolute, 95% CI [{rise.low:+.3f}, {rise.high:+.3f}], "
          f"p = {rise.p_value:.4f} ({significant})")
    print(f"time: {run_minutes:.1f} min for the run (build {build_minutes:.1f} min), "
          f"{run_minutes + build_minutes:.1f} min in all")
    print(f"samples: {files.eval_samples(after['step'])}; TensorBoard: tensorboard --logdir {files.tensorboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
