"""What checking an answer costs: the code sandbox, against the previous implementation.

The code reward now runs each answer in two sandboxes (the program, and a judge that
runs the tests and calls the program over pipes) where it used one before, so that no
program can forge a pass. This measures what that costs, in one run, with the previous
implementation taken from git (``--baseline-ref``, the commit before the change) into a
temporary tree and run the same way in its own process:

* per-call overhead: one correct answer with three assert tests, scored one at a time
  (median seconds per answer);
* throughput: 256 answers (half right, half wrong) scored as one step's batch with
  `CodeReward.score_many` (answers per second).

Prints a table and, last, one JSON line with the ratios (now / before).

    python benchmarks/rewards.py [--quick] [--baseline-ref REV]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "7622725"
"""The last commit whose code reward ran the tests in the program's own interpreter."""

RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4\n"


def measure(tree: Path, calls: int, batch: int) -> dict[str, float]:
    """In a worker process whose imports come from `tree` (this checkout or the baseline's)."""
    sys.path.insert(0, str(tree))
    from roles.rewards.code import CodeExecutionConfig, CodeReward, score_code

    config = CodeExecutionConfig()
    score_code("", RIGHT, TESTS, config=config)  # warm the page cache and the interpreter
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        result = score_code("", RIGHT, TESTS, config=config)
        seconds.append(time.perf_counter() - started)
        assert result.score == 1.0, result.info
    reward = CodeReward(config)
    responses = [RIGHT if index % 2 == 0 else WRONG for index in range(batch)]
    started = time.perf_counter()
    scored = reward.score_many([""] * batch, responses, [TESTS] * batch)
    elapsed = time.perf_counter() - started
    assert [result.score for result in scored] == [1.0 if index % 2 == 0 else 0.0 for index in range(batch)]
    return {"per_call_s": statistics.median(seconds), "batch_per_s": batch / elapsed}


def run_worker(tree: Path, calls: int, batch: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", str(tree), "--calls", str(calls), "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the worker for {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and a smaller batch (a smoke run)")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.calls, args.batch)))
        return
    calls, batch, repeats = (5, 32, 1) if args.quick else (args.calls, args.batch, args.repeats)
    print(f"# rewards benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cpus  "
          f"python {platform.python_version()}  euid {os.geteuid()}  baseline {args.baseline_ref}  repeats {repeats}")
    with tempfile.TemporaryDirectory(prefix="troupe-baseline-") as baseline:
        archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", baseline], input=archive, check=True)
        results: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
        for _ in range(repeats):  # interleaved, so drift in the machine hits both alike
            results["before"].append(run_worker(Path(baseline), calls, batch))
            results["now"].append(run_worker(REPO, calls, batch))
    summary = {
        which: {name: statistics.median(run[name] for run in runs) for name in ("per_call_s", "batch_per_s")}
        for which, runs in results.items()
    }
    print(f"\n{'code reward':>12} {'per answer ms':>14} {f'{batch} answers/s':>16}")
    for which, numbers in summary.items():
        print(f"{which:>12} {numbers['per_call_s'] * 1000:>14.1f} {numbers['batch_per_s']:>16.1f}")
    ratios = {
        "code_per_call_ratio": round(summary["now"]["per_call_s"] / summary["before"]["per_call_s"], 3),
        "code_batch_throughput_ratio": round(summary["now"]["batch_per_s"] / summary["before"]["batch_per_s"], 3),
        "code_batch_answers_per_s": round(summary["now"]["batch_per_s"], 1),
    }
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
