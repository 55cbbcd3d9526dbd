"""What checking an answer costs: the code sandbox and the math checker, against the previous implementation.

The code reward now runs each answer in two sandboxes (the program, and a judge that
runs the tests and calls the program over pipes) where it used one before, so that no
program can forge a pass. This measures what that costs, in one run, with the previous
implementation taken from git (``--baseline-ref``, the commit before the change) into a
temporary tree and run the same way in its own process:

* per-call overhead: one correct answer with three assert tests, scored one at a time
  (median seconds per answer);
* throughput: 256 answers (half right, half wrong) scored as one step's batch with
  `CodeReward.score_many` (answers per second);
* math checker: MATH answers (`score_math`: fractions, radicals, intervals, sets,
  expressions, right and wrong) and GSM8K answers (`score_gsm8k`: ``####``, "the answer
  is", a boxed number, the last number) scored one after another, answers per second;
  now math-verify in a child process, before our own LaTeX normaliser with sympy in one
  (the checker's worker is started before timing: its start-up is paid once per process).

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
MATH_ANSWERS = [  # (response, ground truth); K is a different integer in every pass, so no cache answers for the checker
    (r"so $\boxed{\frac{1}{2}}$", "0.5"), (r"\boxed{\frac{\sqrt{2}}{2}+K}", r"\frac{1}{\sqrt{2}}+K"), (r"\boxed{2x+2K}", "2(x+K)"),
    (r"\boxed{(1,K]}", "(1,K]"), (r"\boxed{\{1,K\}}", r"\{K,1\}"), (r"\boxed{K}", "K"), (r"\boxed{3\sqrt{2}+K}", r"\sqrt{18}+K"),
    (r"\boxed{\frac{1}{K}}", "0.333"), (r"\boxed{2x+1}", "2(x+K)"), (r"\boxed{K\pi}", r"\frac{\pi}{2}"),
]
GSM8K_ANSWERS = [
    ("48 + 24 = K clips.\n#### K", "K"), ("The answer is K.", "K"), (r"So $\boxed{K}$.", "K"),
    ("She sold 48 and 24, so K in total.", "K"), ("#### 71", "K"), ("The answer is 1,000.", "1000"),
]


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
    return {"per_call_s": statistics.median(seconds), "batch_per_s": batch / elapsed, **measure_math(max(1, calls // 5))}


def measure_math(passes: int) -> dict[str, float]:
    """Answers per second of `score_math` and `score_gsm8k` over their answer lists, `passes` times."""
    from roles.rewards import score_gsm8k, score_math, shutdown_symbolic_workers

    numbers = {}
    for name, score, answers in (("math", score_math, MATH_ANSWERS), ("gsm8k", score_gsm8k, GSM8K_ANSWERS)):
        for response, truth in answers:  # start the checker's worker; its start-up is not timed
            score("", response.replace("K", "1000"), truth.replace("K", "1000"))
        started = time.perf_counter()
        for k in range(2, 2 + passes):
            for response, truth in answers:
                assert not score("", response.replace("K", str(k)), truth.replace("K", str(k))).unscored
        numbers[f"{name}_per_s"] = passes * len(answers) / (time.perf_counter() - started)
    shutdown_symbolic_workers()
    return numbers


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
        which: {name: statistics.median(run[name] for run in runs)
                for name in ("per_call_s", "batch_per_s", "math_per_s", "gsm8k_per_s")}
        for which, runs in results.items()
    }
    print(f"\n{'code reward':>12} {'per answer ms':>14} {f'{batch} answers/s':>16}")
    for which, numbers in summary.items():
        print(f"{which:>12} {numbers['per_call_s'] * 1000:>14.1f} {numbers['batch_per_s']:>16.1f}")
    print(f"\n{'math checker':>12} {'MATH answers/s':>15} {'GSM8K answers/s':>16}")
    for which, numbers in summary.items():
        print(f"{which:>12} {numbers['math_per_s']:>15.1f} {numbers['gsm8k_per_s']:>16.1f}")
    ratios = {
        "code_per_call_ratio": round(summary["now"]["per_call_s"] / summary["before"]["per_call_s"], 3),
        "code_batch_throughput_ratio": round(summary["now"]["batch_per_s"] / summary["before"]["batch_per_s"], 3),
        "code_batch_answers_per_s": round(summary["now"]["batch_per_s"], 1),
        "math_answers_per_s": round(summary["now"]["math_per_s"], 1),
        "math_throughput_ratio": round(summary["now"]["math_per_s"] / summary["before"]["math_per_s"], 3),
        "gsm8k_answers_per_s": round(summary["now"]["gsm8k_per_s"], 1),
        "gsm8k_throughput_ratio": round(summary["now"]["gsm8k_per_s"] / summary["before"]["gsm8k_per_s"], 3),
    }
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
