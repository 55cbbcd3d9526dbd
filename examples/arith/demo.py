"""`make demo`: build the arithmetic example (once), train it with GRPO through
`troupe launch` (every role its own process), then print held-out accuracy before and
after training.

    python examples/arith/demo.py [--topology examples/arith-grpo.yaml] [--rebuild] [--set KEY=VALUE ...]

It ends with `troupe report` on the run (plots, health alerts, an HTML page).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "arith" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default=str(REPO / "examples" / "arith-grpo.yaml"))
    parser.add_argument("--rebuild", action="store_true", help="build the model and data again")
    parser.add_argument("--run-dir", default=None, help="default: runs/arith-<time>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a topology override, as `troupe launch --set` (e.g. roles.trainer.config.optim.lr=1e-4)")
    args = parser.parse_args()

    if args.rebuild or not (DATA / "build.json").exists():
        sys.path.insert(0, str(REPO))
        from examples.arith.build import build

        print(f"building the tiny model and the arithmetic data in {DATA.relative_to(REPO)} ...", flush=True)
        build(DATA)
    run_dir = Path(args.run_dir or REPO / "runs" / f"arith-{time.strftime('%Y%m%d-%H%M%S')}")
    troupe = Path(sys.executable).parent / "troupe"
    started = time.monotonic()
    overrides = [item for override in args.set for item in ("--set", override)]
    launched = subprocess.run([str(troupe), "launch", args.topology, "--run-dir", str(run_dir), *overrides], cwd=REPO)
    minutes = (time.monotonic() - started) / 60
    if launched.returncode != 0:
        print(f"the run failed (exit {launched.returncode}); see {run_dir}/logs and `troupe logs {run_dir}`", file=sys.stderr)
        return launched.returncode
    code = report(run_dir, minutes)
    if code == 0:
        print(f"\n$ troupe report {run_dir}", flush=True)
        subprocess.run([str(troupe), "report", str(run_dir)], cwd=REPO)
    return code


def report(run_dir: Path, minutes: float) -> int:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = sorted((r for r in records if "eval/accuracy" in r), key=lambda r: r["step"])
    steps = [r for r in records if "train/reward" in r]
    if len(evals) < 2 or not steps:
        print(f"no before/after evaluation in {run_dir}/metrics.jsonl", file=sys.stderr)
        return 1
    before, after = evals[0], evals[-1]
    print()
    print(f"run directory: {run_dir}")
    print(f"steps: {len(steps)} in {minutes:.1f} min; train/reward {steps[0]['train/reward']:.3f} (step 1) -> "
          f"{steps[-1]['train/reward']:.3f} (step {steps[-1]['step']})")
    print(f"held-out accuracy: before {before['eval/accuracy']:.3f} -> after {after['eval/accuracy']:.3f} "
          f"({after['eval/accuracy'] - before['eval/accuracy']:+.3f} absolute, {int(after['eval/samples'])} samples; "
          f"95% CI after: {after.get('eval/accuracy_ci_low', float('nan')):.3f}-{after.get('eval/accuracy_ci_high', float('nan')):.3f})")
    print(f"samples: {run_dir}/eval/step_{after['step']}.jsonl; TensorBoard: tensorboard --logdir {run_dir}/tb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
