"""Asynchronous against synchronous training on the same budget, in one run.

Runs the arithmetic example (`examples/arith-grpo.yaml`, or `--topology`, every role its
own process, CPU) twice with the same number of steps, prompts and samples: `mode: sync` (each
step generates, then trains) and `mode: async` (the generators sample the next batch
while the trainer trains on this one; rows older than `max_staleness` versions are
dropped, the rest importance-corrected). Reports samples per second of training
(rows trained / summed step time) and held-out accuracy after the last step.

Target: async >= 1.3x the sync throughput at equal accuracy. Prints a table and,
last, one JSON line.

    python benchmarks/async_vs_sync.py [--steps 100] [--topology examples/smollm2-grpo.yaml] [--set PATH=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import ensure_data, launch, machine, metrics  # noqa: E402

ARITH = "examples/arith-grpo.yaml"


def measure(mode: str, steps: int, tmp: Path, extra: list[str], topology: str) -> dict[str, float]:
    run_dir = tmp / mode
    wall = launch(run_dir, [f"roles.controller.config.steps={steps}", f"roles.controller.config.mode={mode}",
                            "roles.controller.config.checkpoint_every=0", "roles.controller.config.eval.every_steps=0", *extra],
                  topology)
    records = metrics(run_dir)
    trained = [r for r in records if "train/reward" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    rows = sum(r["perf/samples_per_s"] * r["timing/step_s"] for r in trained)
    seconds = sum(r["timing/step_s"] for r in trained)
    return {
        "steps": len(trained), "rows": rows, "seconds": seconds, "samples_per_s": rows / seconds,
        "accuracy_before": evals[0]["eval/accuracy"], "accuracy_after": evals[-1]["eval/accuracy"],
        "staleness": sum(r.get("train/staleness", 0.0) for r in trained) / len(trained), "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="PATH=VALUE",
                        help="a topology override for both runs, e.g. roles.controller.config.recompute_logprobs=false")
    parser.add_argument("--topology", default=ARITH,
                        help="the example to run (the real-model one: examples/smollm2-grpo.yaml, built first by "
                             "python examples/smollm2/build.py --out examples/smollm2/data)")
    args = parser.parse_args()
    if args.topology == ARITH:
        ensure_data()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: measure(mode, args.steps, Path(tmp), args.extra, args.topology) for mode in ("sync", "async")}
    print(f"# async vs sync  {time.strftime('%Y-%m-%d')}  {machine()}  {args.steps} steps of {args.topology}  {' '.join(args.extra)}")
    print()
    print(f"{'mode':<8}{'steps':>7}{'rows':>8}{'step s':>10}{'samples/s':>11}{'acc before':>12}{'acc after':>11}{'staleness':>11}")
    for mode, r in results.items():
        print(f"{mode:<8}{r['steps']:>7}{r['rows']:>8.0f}{r['seconds']:>10.1f}{r['samples_per_s']:>11.1f}"
              f"{r['accuracy_before']:>12.3f}{r['accuracy_after']:>11.3f}{r['staleness']:>11.2f}")
    ratio = results["async"]["samples_per_s"] / results["sync"]["samples_per_s"]
    print(f"\nasync / sync throughput: {ratio:.2f} (target >= 1.3); accuracy after: "
          f"async {results['async']['accuracy_after']:.3f}, sync {results['sync']['accuracy_after']:.3f}")
    print(json.dumps({"async_over_sync_throughput": round(ratio, 3),
                      "accuracy_after_sync": round(results["sync"]["accuracy_after"], 4),
                      "accuracy_after_async": round(results["async"]["accuracy_after"], 4)}))


if __name__ == "__main__":
    main()
