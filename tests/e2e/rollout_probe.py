"""An evaluator for end-to-end tests: what the generator returns, written down whole.

Listed in a topology's evaluator role, it asks the live generator for rollouts of a
few held-out prompts at every evaluation and writes everything the reply holds (token
ids, masks, per-token log-probs, finish reasons, the weights version) to
``probe/step_N.json`` in the run directory. A test can then check what no metric
shows: where a response ends, and that the generator sampled with exactly the weights
the trainer saved (by recomputing the log-probs with the exported model).
"""

from __future__ import annotations

import json
from pathlib import Path

from protocols.batch import Batch
from protocols.rl import Generate, Rollouts
from roles.evaluator import EvalContext, Evaluator
from roles.rollout import sampling_message
from roles.sampling import SamplingParams


class RolloutProbe(Evaluator):
    """Samples `n` responses to each of the first `rows` chat rows of `data` and writes the rollouts."""

    def __init__(self, data: str, rows: int = 4, n: int = 2, max_new_tokens: int = 12, seed: int = 0) -> None:
        self.rows = [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines()[:rows]]
        self.sampling = {"n": n, "temperature": 1.0, "max_new_tokens": max_new_tokens, "seed": seed}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        prompts = [ctx.tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
                   for row in self.rows]
        ids = [ctx.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        reply: Rollouts = ctx.ask("generator", Generate(Batch(columns={"prompt_ids": ids, "prompt": prompts}),
                                                          sampling_message(SamplingParams(**self.sampling))))
        batch = reply.batch
        record = {
            "step": ctx.step, "version": reply.version, "sampling": self.sampling,
            **{name: batch.tensors[name].tolist()
               for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "behavior_logprobs")},
            "finish_reasons": list(batch.columns["finish_reason"]), "responses": list(batch.columns["response"]),
        }
        path = ctx.run_dir / "probe" / f"step_{ctx.step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return {"stopped": sum(reason == "stop" for reason in record["finish_reasons"]) / batch.size}
