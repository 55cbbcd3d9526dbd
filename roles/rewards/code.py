"""The code-execution reward: run the response's program against the row's tests.

The program is the last ```python (or ```py / ```python3) fenced block of the
response, else the last untagged fenced block, else, when the response has no fence
at all, the whole response. A response with fences but no Python block scores 0.

Ground truth, in any of these shapes (a JSON string of one is decoded first):

- assert tests: a string of Python (each top-level ``assert`` is one test, together
  with the statements before it; code with no top-level assert, such as
  ``check(candidate)``, is one test), or a list of such snippets, one test each.
  The program runs first (``__name__ != "__main__"``); the tests run in a separate,
  trusted judge process that calls the program's functions and gets back plain values
  (`roles.sandbox.runner.run_with_tests`): an answer cannot pass by returning an
  object that equals everything, patching ``assert`` or forging a verdict. Helper
  code the tests rely on (a HumanEval prompt's ``poly``) belongs in the tests, where
  the program cannot replace it.
- stdin/stdout cases: a list of ``{"input": str, "output": str}``, or
  ``{"inputs": [str, ...], "outputs": [str, ...]}`` (APPS/TACO style). Each case is a
  fresh sandbox run of the program as ``__main__``; it passes when the program ends
  normally (``sys.exit(0)`` included) and its output equals the expected one after
  trailing whitespace is stripped from every line and trailing empty lines dropped.
- either of the above under a ``"tests"`` key.

Score: the fraction of tests passed, or with ``partial_credit=False`` 1 only when all
pass; every verdict comes from trusted code (the judge, or the parent comparing
outputs). A sandbox that fails for its own reasons gives ``unscored=True`` (score 0).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from roles.rewards.types import RewardResult
from roles.sandbox.config import SandboxConfig, SandboxRun
from roles.sandbox.runner import map_concurrently, run_in_sandbox, run_with_tests

FENCED_BLOCK = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}
TEST_TEXT_LIMIT = 200


class CodeExecutionConfig(BaseModel):
    """How `score_code` runs and grades programs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    sandbox: SandboxConfig = SandboxConfig()
    """Limits of each sandboxed run: time (``time_limit_s``), memory
    (``memory_limit_mb``), processes, file size, interpreter; see `SandboxConfig`."""
    partial_credit: bool = True
    """Score the fraction of tests passed; False scores 1 only when every test passes
    (and stops at the first failing stdin case)."""
    max_concurrent: int = Field(default=4, gt=0)
    """Sandboxes running at once in `score_code_batch` and `CodeReward.score_many`."""


@dataclass(frozen=True)
class AssertTests:
    """Python snippets run after the program, one test each."""

    snippets: tuple[str, ...]


@dataclass(frozen=True)
class StdioCase:
    """One run of the program: its standard input and the expected standard output."""

    input: str
    output: str


@dataclass(frozen=True)
class StdioTests:
    cases: tuple[StdioCase, ...]


def extract_program(response: str) -> str | None:
    """The program in a response (see the module docstring); None when there is none."""
    blocks = FENCED_BLOCK.findall(response)
    tagged = [body for tag, body in blocks if tag.strip().lower() in PYTHON_TAGS]
    untagged = [body for tag, body in blocks if not tag.strip()]
    if tagged or untagged:
        return (tagged or untagged)[-1]
    if "```" in response:
        return None  # another language, or a block cut off by the length limit
    return response if response.strip() else None


def split_assert_code(code: str) -> tuple[str, ...]:
    """One snippet per top-level assert, holding the statements since the previous one;
    statements after the last assert join it. Code without a top-level assert is one."""
    ends = [node.end_lineno for node in ast.parse(code).body if isinstance(node, ast.Assert)]
    if not ends:
        return (code,)
    lines = code.splitlines(keepends=True)
    ends[-1] = len(lines)
    snippets, start = [], 0
    for end in ends:
        if end > start:  # two asserts on one line (``a; b``) stay one test
            snippets.append("".join(lines[start:end]))
            start = end
    return tuple(snippets)


def parse_ground_truth(ground_truth: Any) -> AssertTests | StdioTests:
    """The tests a ground truth describes (shapes in the module docstring).

    Raises:
        ValueError: an unknown shape, no tests, or test code that is not valid Python.
    """
    if isinstance(ground_truth, str) and ground_truth.lstrip()[:1] in ("{", "["):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError:
            pass  # not JSON: Python test code that starts with a bracket
    if isinstance(ground_truth, dict) and set(ground_truth) == {"tests"}:
        ground_truth = ground_truth["tests"]
    tests = _parse_shape(ground_truth)
    if not (tests.snippets if isinstance(tests, AssertTests) else tests.cases):
        raise ValueError("ground_truth has no tests; a code row needs at least one assert or stdin/stdout case")
    return tests


def _parse_shape(ground_truth: Any) -> AssertTests | StdioTests:
    if isinstance(ground_truth, str):
        try:
            return AssertTests(split_assert_code(ground_truth))
        except SyntaxError as error:
            raise ValueError(f"ground_truth test code is not valid Python: {error}") from error
    if isinstance(ground_truth, list) and all(isinstance(item, str) for item in ground_truth):
        return AssertTests(tuple(ground_truth))
    if isinstance(ground_truth, list) and all(isinstance(item, dict) for item in ground_truth):
        return StdioTests(tuple(_stdio_case(item.get("input"), item.get("output")) for item in ground_truth))
    if isinstance(ground_truth, dict) and {"inputs", "outputs"} <= set(ground_truth):
        if "fn_name" in ground_truth:
            raise ValueError("call-based tests (fn_name) are not supported: convert them to assert tests")
        inputs, outputs = ground_truth["inputs"], ground_truth["outputs"]
        if len(inputs) != len(outputs):
            raise ValueError(f"ground_truth has {len(inputs)} inputs but {len(outputs)} outputs")
        return StdioTests(tuple(_stdio_case(given, expected) for given, expected in zip(inputs, outputs)))
    raise ValueError(
        f"ground_truth of type {type(ground_truth).__name__} is not a known test shape: use a string of assert "
        'tests, a list of them, a list of {"input", "output"} cases or {"inputs": [...], "outputs": [...]}'
    )


def _stdio_case(given: Any, expected: Any) -> StdioCase:
    if not isinstance(given, str) or not isinstance(expected, str):
        raise ValueError(f"a stdin/stdout case needs string input and output, got {given!r} -> {expected!r}")
    return StdioCase(given, expected)


def outputs_match(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing empty lines."""

    def normalise(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return normalise(actual) == normalise(expected)


def score_code(prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult:
    """Score the response's program on the ground truth's tests (module docstring).

    Keyword arguments named like `CodeExecutionConfig` fields, or ``config=`` with a
    whole one, set the options (the reward router passes its ``options`` this way);
    other keywords (a row's extra columns) and ``prompt`` are not used.

    Returns:
        ``info`` holds ``tests`` (per test: ``passed``, ``error``, ``test``), ``passed``,
        ``total``, ``timed_out``, ``seconds``, the isolation flags
        (``network_isolated``, ``filesystem_isolated``, ``privileges_dropped``) and the
        program's ``stderr`` tail. ``unscored=True`` with ``infra_error`` when the
        sandbox failed.

    Raises:
        ValueError: the ground truth is malformed (a dataset bug, not a wrong answer).
    """
    config = _config_from(extra)
    tests = parse_ground_truth(ground_truth)
    program = extract_program(response)
    total = len(tests.snippets) if isinstance(tests, AssertTests) else len(tests.cases)
    if program is None:
        return RewardResult(0.0, None, info={"error": "no Python program in the response", "passed": 0, "total": total})
    if isinstance(tests, AssertTests):
        run = run_with_tests(program, tests.snippets, config.sandbox, module_name="solution")
        if run.infra_error is not None:
            return _unscored(program, run)
        verdicts = [_assert_verdict(run, index, snippet) for index, snippet in enumerate(tests.snippets)]
        return _result(program, verdicts, [run], config)
    verdicts, runs = [], []
    for case in tests.cases:
        if verdicts and not verdicts[-1]["passed"] and not config.partial_credit:
            verdicts.append({"passed": False, "error": "not run: an earlier case failed", "test": _clip(case.input)})
            continue
        run = run_in_sandbox(program, config.sandbox, stdin=case.input, module_name="__main__")
        if run.infra_error is not None:
            return _unscored(program, run)
        runs.append(run)
        verdicts.append({"passed": False, "error": _run_failure(run), "test": _clip(case.input)})
        if verdicts[-1]["error"] is None:
            matched = outputs_match(run.stdout, case.output)
            verdicts[-1] = {**verdicts[-1], "passed": matched, "error": None if matched else "wrong answer"}
    return _result(program, verdicts, runs, config)


def score_code_batch(
    prompts: Sequence[str],
    responses: Sequence[str],
    ground_truths: Sequence[Any],
    config: CodeExecutionConfig | None = None,
) -> list[RewardResult]:
    """`score_code` for many rows, in row order, with at most ``config.max_concurrent``
    sandboxes at once (one thread per sandbox; each runs its cases one after another)."""
    config = config or CodeExecutionConfig()
    if not len(prompts) == len(responses) == len(ground_truths):
        raise ValueError(
            f"score_code_batch needs one entry per row, got prompts={len(prompts)} "
            f"responses={len(responses)} ground_truths={len(ground_truths)}"
        )
    rows = zip(prompts, responses, ground_truths, strict=True)
    return map_concurrently(lambda row: score_code(*row, config=config), rows, config.max_concurrent, "code-reward")


class CodeReward:
    """`score_code` with fixed options, as a batch reward function (``score_many``)."""

    def __init__(self, config: CodeExecutionConfig | None = None, **options: Any) -> None:
        """Pass a config, or its fields by keyword (validated now: a typo is an error)."""
        self.config = config or CodeExecutionConfig(**options)

    def __call__(self, prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult:
        return score_code(prompt, response, ground_truth, config=self.config)

    def score_many(
        self, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[Any]
    ) -> list[RewardResult]:
        return score_code_batch(prompts, responses, ground_truths, self.config)


def _config_from(extra: dict[str, Any]) -> CodeExecutionConfig:
    if "config" in extra:
        return CodeExecutionConfig.model_validate(extra["config"])
    options = {name: value for name, value in extra.items() if name in CodeExecutionConfig.model_fields}
    return CodeExecutionConfig(**options)


def _run_failure(run: SandboxRun) -> str | None:
    """Why a run failed as a whole, or None when the harness reported normally."""
    if run.timed_out:
        return "time limit exceeded"
    if run.program_error == "time limit exceeded":
        return "time limit exceeded"
    if not run.completed:
        return "no verdict: the process ended before the harness finished (os._exit, a signal, a crash)"
    if run.program_error is not None:
        return f"program failed: {run.program_error}"
    return None


def _assert_verdict(run: SandboxRun, index: int, snippet: str) -> dict[str, Any]:
    error = _run_failure(run) or run.test_errors[index]
    return {"passed": error is None, "error": error, "test": _clip(snippet)}


def _result(
    program: str, verdicts: list[dict[str, Any]], runs: list[SandboxRun], config: CodeExecutionConfig
) -> RewardResult:
    passed = sum(verdict["passed"] for verdict in verdicts)
    total = len(verdicts)
    score = passed / total if config.partial_credit else float(passed == total)
    info = {
        "tests": verdicts,
        "passed": passed,
        "total": total,
        "timed_out": any(run.timed_out for run in runs),
        "seconds": sum(run.seconds for run in runs),
        **_isolation(runs[-1]),
        "stderr": runs[-1].stderr_tail,
    }
    return RewardResult(score, program, info=info)


def _unscored(program: str, run: SandboxRun) -> RewardResult:
    info = {"infra_error": run.infra_error, "stderr": run.stderr_tail}
    return RewardResult(0.0, program, unscored=True, info=info)


def _isolation(run: SandboxRun) -> dict[str, Any]:
    return {
        "network_isolated": run.network_isolated,
        "filesystem_isolated": run.filesystem_isolated,
        "privileges_dropped": run.privileges_dropped,
        "isolation_notes": list(run.isolation_notes),
    }


def _clip(text: str) -> str:
    return text if len(text) <= TEST_TEXT_LIMIT else text[:TEST_TEXT_LIMIT] + "..."
