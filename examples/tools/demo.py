"""`make demo-tools`: a tiny chat model learns to call the calculator, on the CPU.

Builds the model and data if needed (examples/tools/build.py: a tiny model that calls
the calculator on about a quarter of the questions and gets two-digit products wrong
when it answers alone), trains it with GRPO on multi-turn episodes with the environment
role (examples/tools-grpo.yaml, through the Python API: every role its own process),
then prints what the held-out episodes measured before, during and after training:
the success rate, the share of episodes that called the calculator, and the paired
difference of success over the same held-out questions with its 95% interval.

    python examples/tools/demo.py [--seed 0] [--rebuild] [--quick] [--data DIR] [--run-dir DIR] [--set KEY=VALUE ...]

``--seed`` picks the build (split, traces, weights; seed 0 in examples/tools/data,
others in examples/tools/data/seed-N) and the order of the training prompts.
``--quick`` builds the much smaller model the test uses; ``--data`` builds (or reuses)
the model and data in another directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: `roles` and `examples` live at the repository root
    sys.path.insert(0, str(REPO))

from examples.launching import run_example  # noqa: E402
from examples.smollm2.demo import before_and_after  # noqa: E402

DATA = REPO / "examples" / "tools" / "data"
TOPOLOGY = REPO / "examples" / "tools-grpo.yaml"
CALL_TAG = "<tool_call>"


def data_directory(seed: int) -> Path:
    return DATA if seed == 0 else DATA / f"seed-{seed}"


def built_with(data: Path) -> dict[str, Any] | None:
    """The data directory's build.json, or None when it has not been built."""
    path = data / "build.json"
    return json.loads(path.read_text()) if path.exists() else None


def overrides_for(data: Path, seed: int) -> list[str]:
    """``--set`` overrides that point the topology at `data` and order the prompts by `seed`."""
    model = str(data / "model")
    return [
        f"roles.controller.config.tokenizer={model}", f"roles.generator.config.model={model}",
        f"roles.trainer.config.model={model}",
        f"roles.controller.config.data.files=[{data / 'train.jsonl'}]",
        f"roles.controller.config.eval.data.files=[{data / 'heldout.jsonl'}]",
        f"roles.controller.config.data.seed={seed}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default=str(TOPOLOGY))
    parser.add_argument("--seed", type=int, default=0, help="the build's seed and the prompt order's")
    parser.add_argument("--rebuild", action="store_true", help="build the model and data again")
    parser.add_argument("--quick", action="store_true", help="the small quick build (for tests)")
    parser.add_argument("--data", type=Path, default=None, help="the build's directory (default: examples/tools/data)")
    parser.add_argument("--run-dir", default=None, help="default: runs/tools-<time>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a topology override, as `troupe launch --set` (e.g. roles.controller.config.steps=10)")
    args = parser.parse_args()

    started = time.monotonic()
    data = (args.data or data_directory(args.seed)).resolve()
    built = built_with(data)
    if args.rebuild or built is None or built["seed"] != args.seed or built["quick"] != args.quick:
        from examples.tools.build import build

        print(f"building the tiny tool-using model and the data in {data} ...", flush=True)
        built = build(data, seed=args.seed, quick=args.quick)
    build_minutes = (time.monotonic() - started) / 60
    run_dir = Path(args.run_dir or REPO / "runs" / f"tools-{time.strftime('%Y%m%d-%H%M%S')}")
    code = run_example(args.topology, [*overrides_for(data, args.seed), *args.set], run_dir)
    run_minutes = (time.monotonic() - started) / 60 - build_minutes
    if code != 0:
        return code
    return report(run_dir, built, build_minutes, run_minutes)


def call_share(samples: Path) -> float:
    """Share of the held-out episodes in one evaluation dump whose sampled text has a call."""
    responses = [json.loads(line)["response"] for line in samples.read_text().splitlines()]
    return sum(CALL_TAG in response for response in responses) / len(responses)


def report(run_dir: Path, built: dict[str, Any], build_minutes: float, run_minutes: float) -> int:
    found = before_and_after(run_dir)
    if found is None:
        return 1
    files, evaluations, steps, rise, significant = found
    before, after = evaluations[0], evaluations[-1]
    print()
    print(f"run directory: {run_dir}")
    print(f"model: {built['parameters']} parameters, seed {built['seed']}; held-out: {rise.pairs} questions "
          f"x {int(after['eval/samples']) // rise.pairs} episodes at temperature 1")
    print("held-out episodes    step  success  called the calculator  tool calls/episode  tool errors/episode")
    for record in evaluations:
        print(f"{'':20} {record['step']:4d}  {record['eval/accuracy']:7.3f}  "
              f"{call_share(files.eval_samples(record['step'])):21.3f}  {record['eval/episode_tool_calls']:18.3f}  "
              f"{record['eval/episode_tool_errors']:19.3f}")
    print(f"training: {len(steps)} steps; train/reward {steps[0]['train/reward']:.3f} (step 1) -> "
          f"{steps[-1]['train/reward']:.3f} (step {steps[-1]['step']}); tool calls/episode "
          f"{steps[0]['train/episode_tool_calls']:.3f} -> {steps[-1]['train/episode_tool_calls']:.3f}")
    print(f"held-out success: before {before['eval/accuracy']:.3f} -> after {after['eval/accuracy']:.3f}; "
          f"paired difference {rise.difference:+.3f}, 95% CI [{rise.low:+.3f}, {rise.high:+.3f}] ({significant})")
    print(f"time: {run_minutes:.1f} min for the run (build {build_minutes:.1f} min)")
    print(f"samples: {files.eval_samples(after['step'])}; TensorBoard: tensorboard --logdir {files.tensorboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
