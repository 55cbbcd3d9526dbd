"""An environment for the multi-turn end-to-end test (imported by the environment role's
process): the arithmetic task with a second try."""

from __future__ import annotations

from typing import Any

from roles.agents.environments import Action, Environment, Observation
from roles.rewards.arithmetic import score_arithmetic


class SecondTry(Environment):
    """Asks the row's question; a wrong first answer gets the question's ``=`` again
    and a second turn; the last answer is scored as `score_arithmetic` scores it."""

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.row = row
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, action: Action) -> Observation:
        score = score_arithmetic(self.row["prompt"], action.content, self.row["ground_truth"]).score
        if score == 1.0 or action.turn == 2:
            return Observation([], score, done=True)
        return Observation([{"role": "user", "content": "="}], 0.0)
