"""Where an RL step's time goes: per phase, per role, and how much of it is messaging.

By default runs the arithmetic example (`examples/arith-grpo.yaml`, every role its own
process, CPU). With ``--model DIR --data FILE`` it runs GRPO on a real Hugging Face chat
model instead (rl_runs.real_model_topology: chat-format JSONL prompts, last-number
reward, one on-policy update per batch). It reports:

* the median seconds per phase over the steps after the first (`timing/<phase>_s`
  from metrics.jsonl; the first step pays one-off costs such as the first AdamW step);
* per role and message kind, the median seconds its handlers ran per step (from the
  message logs): which process works in which phase;
* from the message logs, for every ask the controller made during training steps:
  round trip (its send to the reply's arrival) minus the time the receiver spent in
  its handler and waiting in its mailbox. That remainder is messaging: encoding,
  the sockets, decoding, routing. Summed over a step's asks (an upper bound: asks
  sent in parallel overlap) and divided by the step's time, it is the messaging share,
  compared against the handlers' own time (the raw work) in the same run;
* each role process's peak resident memory (VmHWM).

Target: messaging share < 5%. Prints tables and, last, one JSON line.

    python benchmarks/step_breakdown.py [--steps 40]
    python benchmarks/step_breakdown.py --model examples/smollm2/data/model \\
        --data examples/smollm2/data/arithmetic/train.jsonl --steps 6 \\
        [--prompts 8 --samples 4 --max-new-tokens 32] [--no-reference] [--set PATH=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import ensure_data, launch, log_events, machine, metrics, real_model_topology  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", type=Path, help="a local Hugging Face chat model directory (default: the arithmetic example)")
    parser.add_argument("--data", type=Path, help="with --model: chat-format JSONL rows (messages, ground_truth: one number)")
    parser.add_argument("--prompts", type=int, default=8, help="with --model: prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="with --model: responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="with --model: tokens per response, at most")
    parser.add_argument("--no-reference", action="store_true", help="with --model: no reference role and no KL (TRL's default beta=0)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="PATH=VALUE", help="a topology override")
    args = parser.parse_args()
    if (args.model is None) != (args.data is None):
        parser.error("--model and --data go together")
    peaks: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [f"roles.controller.config.steps={args.steps}", *args.extra]
        if args.model is None:
            ensure_data()
            topology: str | Path = "examples/arith-grpo.yaml"
            overrides.append("roles.controller.config.eval.data=null")
        else:
            topology = real_model_topology(Path(tmp) / "topology.yaml", args.model.resolve(), args.data.resolve(),
                                           args.prompts, args.samples, args.max_new_tokens, reference=not args.no_reference)
        launch(run_dir, overrides, topology, peak_rss=peaks)
        records = [r for r in metrics(run_dir) if "train/reward" in r]
        events = log_events(run_dir)
    described = str(topology) if args.model is None else f"{args.model.name}, {args.prompts} prompts x {args.samples} samples, max_new_tokens {args.max_new_tokens}"
    print(f"# step breakdown  {time.strftime('%Y-%m-%d %H:%M')}  {machine()}  steps {len(records)}  ({described})  {' '.join(args.extra)}")
    timed = records[1:] if len(records) > 1 else records
    phases = sorted({k for r in records for k in r if k.startswith("timing/")})
    print(f"\n{'phase':<28}{'median s':>10}{'first s':>10}")
    for phase in phases:
        values = [r[phase] for r in timed if phase in r]
        print(f"{phase:<28}{statistics.median(values):>10.3f}{records[0].get(phase, float('nan')):>10.3f}")

    handled = {e["message_id"]: e for e in events if e.get("event") == "handled"}
    sends = {e["message_id"]: e for e in events if e.get("event") == "send" and e.get("actor") == "controller-0"
             and str(e.get("kind", "")).startswith(("rl.", "weights.publish"))}
    replies = {e["correlation_id"]: e for e in events if e.get("event") == "receive" and e.get("actor") == "controller-0" and e.get("correlation_id")}
    by_trace: dict[str, float] = defaultdict(float)
    work: dict[str, float] = defaultdict(float)
    per_role: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counted = 0
    for message_id, send in sends.items():
        reply, done = replies.get(message_id), handled.get(message_id)
        if reply is None or done is None:
            continue
        rtt = reply["ts"] - send["ts"]
        inside = (done.get("handle_s") or 0.0) + (done.get("queue_s") or 0.0)
        by_trace[send["trace_id"]] += max(0.0, rtt - inside)
        work[send["trace_id"]] += done.get("handle_s") or 0.0
        per_role[(done["actor"], done["kind"])][send["trace_id"]] += done.get("handle_s") or 0.0
        counted += 1
    step_s = sum(r["timing/step_s"] for r in records)
    trained = [trace for trace in by_trace if work[trace] > 0]
    print(f"\n{'role':<14}{'message':<24}{'handler s per step (median)':>30}")
    for (actor, kind), traces in sorted(per_role.items()):
        values = [traces[t] for t in trained if t in traces]
        if values:
            print(f"{actor:<14}{kind:<24}{statistics.median(values):>30.3f}")
    print(f"\n{'role process':<16}{'peak RSS MiB':>14}")
    for name, peak in sorted(peaks.items()):
        print(f"{name:<16}{peak / 2**20:>14.0f}")
    messaging = sum(by_trace[t] for t in trained)
    handlers = sum(work[t] for t in trained)
    share = messaging / step_s
    print()
    print(f"asks from the controller, matched with their handling: {counted}")
    print(f"messaging (round trip - handler - mailbox wait), summed: {messaging:.3f} s over {step_s:.3f} s of steps")
    print(f"handlers' own time (the raw work), summed: {handlers:.3f} s")
    print(f"messaging share of the step: {100 * share:.2f}%  (target < 5%); messaging / handler time: {messaging / handlers:.3f}")
    summary: dict[str, Any] = {
        "messaging_share": round(share, 4), "messaging_over_handlers": round(messaging / handlers, 4),
        "step_s_mean": round(step_s / len(records), 4), "step_s_median_after_first": round(statistics.median(r["timing/step_s"] for r in timed), 3),
        "peak_rss_mib": {name: round(peak / 2**20) for name, peak in sorted(peaks.items())},
        "reward_mean": round(statistics.mean(r["train/reward"] for r in records), 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
