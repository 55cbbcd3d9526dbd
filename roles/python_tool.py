"""The ``python`` tool of multi-turn episodes: the model's code runs in the code sandbox
(roles.sandbox: its own process, uid, limits and no network), and the tool's answer is
what the program printed, or how it failed.

`PythonToolEnvironment` is a `ToolEnvironment` (roles.agents.environments) that offers
the tool and scores the final answer like the arithmetic task; `run_python` is the tool
itself, for environments of one's own. It lives here, not in the pure roles/agents (it
starts processes) nor in roles/sandbox (which never imports the reward logic).
"""

from __future__ import annotations

from typing import Any

from roles.agents.environments import Action, ToolEnvironment, Tool
from roles.rewards.arithmetic import score_arithmetic
from roles.sandbox.config import SandboxConfig
from roles.sandbox.runner import run_in_sandbox

PYTHON_SCHEMA = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Runs a Python program (standard library only, no network, a few seconds) and returns what it printed.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program; print the results you need"}},
            "required": ["code"],
        },
    },
}
MAX_ANSWER_CHARACTERS = 2000
"""The tool's answer is cut to this: a program that prints a megabyte must not flood the context."""


def run_python(code: str, config: SandboxConfig) -> str:
    """What `code` printed, or ``error: ...`` with the reason it did not finish; cut to
    MAX_ANSWER_CHARACTERS. Raises RuntimeError when the sandbox itself cannot run."""
    run = run_in_sandbox(code, config)
    if run.infra_error is not None:
        raise RuntimeError(f"the sandbox could not run the program: {run.infra_error}")
    if run.timed_out:
        answer = f"error: the program ran past its {config.time_limit_s:g} s limit\n{run.stdout}"
    elif run.program_error is not None or not run.completed:
        answer = f"{run.stdout}error: {run.program_error or 'the program ended without finishing'}\n{run.stderr_tail}"
    else:
        answer = run.stdout
    return answer[:MAX_ANSWER_CHARACTERS]


class PythonToolEnvironment(ToolEnvironment):
    """The ``python`` tool on rows with ``prompt`` and ``ground_truth`` (an integer
    answer, scored as `score_arithmetic` scores a response).

    Args:
        sandbox: the sandbox's limits (roles.sandbox.SandboxConfig fields).
    """

    tools = [PYTHON_SCHEMA]

    def __init__(self, **sandbox: Any) -> None:
        super().__init__()
        self.sandbox = SandboxConfig(**{"time_limit_s": 5.0, "memory_limit_mb": 256, **sandbox})

    @property
    def functions(self) -> dict[str, Tool]:
        return {"python": lambda code: run_python(str(code), self.sandbox)}

    def final_reward(self, action: Action) -> float:
        return score_arithmetic(self.row.get("prompt", ""), action.content, self.row["ground_truth"]).score
