"""`make demo`: build the arithmetic example (once), train it with GRPO through the
Python API (`launch.Run`, which `troupe launch` also calls: every role its own
process), then print held-out accuracy before and after training.

    python examples/arith/demo.py [--topology examples/arith-grpo.yaml] [--rebuild] [--set KEY=VALUE ...]

It ends with `troupe report` on the run (plots, health alerts, an HTML page).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "arith" / "data"
if str(REPO) not in sys.path:  # run as a script: `roles` and `runtime` live at the repository root
    sys.path.insert(0, str(REPO))

from examples.launching import run_example  # noqa: E402
from launch.cli import main as troupe  # noqa: E402
from roles.metrics import read_metrics  # noqa: E402
from runtime.run_dir import RunDir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default=str(REPO / "examples" / "arith-grpo.yaml"))
    parser.add_argument("--rebuild", action="store_true", help="build the model and data again")
    parser.add_argument("--run-dir", default=None, help="default: runs/arith-<time>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a topology override, as `troupe launch --set` (e.g. roles.trainer.config.optim.lr=1e-4)")
    args = parser.parse_args()

    if args.rebuild or not (DATA / "build.json").exists():
        from examples.arith.build import build

        print(f"building the tiny model and the arithmetic data in {DATA.relative_to(REPO)} ...", flush=True)
        build(DATA)
    run_dir = Path(args.run_dir or REPO / "runs" / f"arith-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.monotonic()
    code = run_example(args.topology, args.set, run_dir)
    minutes = (time.monotonic() - started) / 60
    if code != 0:
        return code
    code = report(run_dir, minutes)
    if code == 0:
        print(f"\n$ troupe report {run_dir}", flush=True)
        troupe(["report", str(run_dir)])
    return code


def report(run_dir: Path, minutes: float) -> int:
    files = RunDir(run_dir)
    records = read_metrics(run_dir)
    evals = sorted((r for r in records if "eval/accuracy" in r), key=lambda r: r["step"])
    steps = [r for r in records if "train/reward" in r]
    if len(evals) < 2 or not steps:
        print(f"no before/after evaluation in {files.metrics}", file=sys.stderr)
        return 1
    before, after = evals[0], evals[-1]
    print()
    print(f"run directory: {run_dir}")
    print(f"steps: {len(steps)} in {minutes:.1f} min; train/reward {steps[0]['train/reward']:.3f} (step 1) -> "
          f"{steps[-1]['train/reward']:.3f} (step {steps[-1]['step']})")
    print(f"held-out accuracy: before {before['eval/accuracy']:.3f} -> after {after['eval/accuracy']:.3f} "
          f"({after['eval/accuracy'] - before['eval/accuracy']:+.3f} absolute, {int(after['eval/samples'])} samples; "
          f"95% CI after: {after.get('eval/accuracy_ci_low', float('nan')):.3f}-{after.get('eval/accuracy_ci_high', float('nan')):.3f})")
    print(f"samples: {files.eval_samples(after['step'])}; TensorBoard: tensorboard --logdir {files.tensorboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
