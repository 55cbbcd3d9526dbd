"""A custom evaluator for the arithmetic example: greedy accuracy on held-out problems.

Listed in a topology's evaluator role (it runs after the built-in sampled evaluation):

    evaluator:
      entry: evaluator
      config:
        evaluators:
          - {entry: "examples.arith.evaluators:GreedyAccuracy", args: {data: examples/arith/data/heldout.jsonl, rows: 32}}

or from Python: ``run.register_evaluator(GreedyAccuracy("examples/arith/data/heldout.jsonl"))``.
"""

from __future__ import annotations

import json
from pathlib import Path

from roles.evaluator import EvalContext, Evaluator


class GreedyAccuracy(Evaluator):
    """Share of the first `rows` held-out problems answered right by greedy decoding."""

    def __init__(self, data: str, rows: int = 32, max_new_tokens: int = 6) -> None:
        lines = Path(data).read_text(encoding="utf-8").splitlines()[:rows]
        self.rows = [json.loads(line) for line in lines]
        self.max_new_tokens = max_new_tokens

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        samples = ctx.generate([row["prompt"] for row in self.rows], n=1, top_k=1, max_new_tokens=self.max_new_tokens)
        scores = ctx.score([s["prompt"] for s in samples], [s["response"] for s in samples],
                           [row["ground_truth"] for row in self.rows], [row.get("data_source", "arith") for row in self.rows])
        return {"accuracy": sum(score >= 1.0 for score in scores) / len(scores),
                "weights_version": float(min(s["version"] for s in samples))}
