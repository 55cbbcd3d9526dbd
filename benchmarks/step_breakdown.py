"""Where an RL step's time goes, and how much of it is messaging.

Runs the arithmetic example (`examples/arith-grpo.yaml`, every role its own process,
CPU) for `--steps` steps and reports:

* the mean seconds per phase (`timing/<phase>_s` from metrics.jsonl);
* from the message logs, for every ask the controller made during training steps:
  round trip (its send to the reply's arrival) minus the time the receiver spent in
  its handler and waiting in its mailbox. That remainder is messaging: encoding,
  the sockets, decoding, routing. Summed over a step's asks (an upper bound: asks
  sent in parallel overlap) and divided by the step's time, it is the messaging share,
  compared against the handlers' own time (the raw work) in the same run.

Target: messaging share < 5%. Prints a table and, last, one JSON line.

    python benchmarks/step_breakdown.py [--steps 40]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import ensure_data, launch, log_events, machine, metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    ensure_data()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        launch(run_dir, [f"roles.controller.config.steps={args.steps}", "roles.controller.config.eval.data=null"])
        records = [r for r in metrics(run_dir) if "train/reward" in r]
        events = log_events(run_dir)
    phases = sorted({k for r in records for k in r if k.startswith("timing/")})
    print(f"# step breakdown  {time.strftime('%Y-%m-%d')}  {machine()}  steps {len(records)}  (examples/arith-grpo.yaml)")
    print()
    print(f"{'phase':<28}{'mean s':>10}")
    for phase in phases:
        values = [r[phase] for r in records if phase in r]
        print(f"{phase:<28}{statistics.mean(values):>10.4f}")

    handled = {e["message_id"]: e for e in events if e.get("event") == "handled"}
    sends = {e["message_id"]: e for e in events if e.get("event") == "send" and e.get("actor") == "controller-0"
             and str(e.get("kind", "")).startswith(("rl.", "weights.publish"))}
    replies = {e["correlation_id"]: e for e in events if e.get("event") == "receive" and e.get("actor") == "controller-0" and e.get("correlation_id")}
    by_trace: dict[str, float] = defaultdict(float)
    work: dict[str, float] = defaultdict(float)
    counted = 0
    for message_id, send in sends.items():
        reply, done = replies.get(message_id), handled.get(message_id)
        if reply is None or done is None:
            continue
        rtt = reply["ts"] - send["ts"]
        inside = (done.get("handle_s") or 0.0) + (done.get("queue_s") or 0.0)
        by_trace[send["trace_id"]] += max(0.0, rtt - inside)
        work[send["trace_id"]] += done.get("handle_s") or 0.0
        counted += 1
    step_s = sum(r["timing/step_s"] for r in records)
    trained = [trace for trace in by_trace if work[trace] > 0]
    messaging = sum(by_trace[t] for t in trained)
    handlers = sum(work[t] for t in trained)
    share = messaging / step_s
    print()
    print(f"asks from the controller, matched with their handling: {counted}")
    print(f"messaging (round trip - handler - mailbox wait), summed: {messaging:.3f} s over {step_s:.3f} s of steps")
    print(f"handlers' own time (the raw work), summed: {handlers:.3f} s")
    print(f"messaging share of the step: {100 * share:.2f}%  (target < 5%); messaging / handler time: {messaging / handlers:.3f}")
    print(json.dumps({"messaging_share": round(share, 4), "messaging_over_handlers": round(messaging / handlers, 4),
                      "step_s_mean": round(step_s / len(records), 4)}))


if __name__ == "__main__":
    main()
