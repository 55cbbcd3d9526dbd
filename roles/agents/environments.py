"""Environments: what a multi-turn episode talks to between the model's turns.

One `Environment` object is one episode. `reset` takes the data row and returns the
episode's first chat messages (the prompt); after each model turn `step` takes the
turn (its text, and the tool calls read from it by the run's `ToolCallFormat`) and
returns an `Observation`: the messages to append (tool results, a user's reply), this
turn's reward, and whether the episode is over. The environment role (next) keeps one
object per trajectory and calls these with deadlines; user environments are classes
named by import path, as custom rewards are.

Built-ins:

* `ToolEnvironment`: answers tool calls with the tools' results as ``tool`` messages
  and ends the episode at the first turn without a call, scored by `final_reward`.
  A malformed call, an unknown tool, bad arguments or a tool that raises gets an error
  message back, never an exception: the model reads it and may try again.
* `CalculatorEnvironment`: the ``calculator`` tool (integer and decimal arithmetic,
  evaluated without ``eval``) on the arithmetic task, scored like `score_arithmetic`.
* `NumberGuessingGame`: no tools; the model guesses a secret number and is told
  "higher" or "lower" until it finds it or runs out of guesses; reward 1 at the end
  when found. It exercises the loop beyond tools: a user-turn reply and a final reward.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from roles.agents.tool_calls import MalformedToolCall, ToolCall
from roles.rewards.arithmetic import score_arithmetic
from roles.rewards.final_answer import score_final_number

Message = dict[str, Any]
"""A chat message: ``{"role": ..., "content": ...}`` (tool messages also name the tool)."""


class Action(NamedTuple):
    """One model turn, as an environment receives it."""

    text: str
    """The turn's decoded text, special tokens left out."""
    content: str
    """The text outside tool calls."""
    calls: list[ToolCall]
    """The tool calls read from the turn."""
    malformed: list[MalformedToolCall]
    """The calls that could not be read."""
    turn: int
    """1 for the model's first turn."""


class Observation(NamedTuple):
    """What an environment answers a turn with."""

    messages: list[Message]
    """Chat messages to append after the model's turn (empty when the episode ends)."""
    reward: float = 0.0
    """This turn's reward; the episode's rewards are combined by the run's settings."""
    done: bool = False
    """True when the episode is over."""
    info: dict[str, Any] = {}
    """Numbers to log (counted per episode: ``tool_calls``, ``tool_errors``, ...)."""


class Environment(ABC):
    """One episode. Subclasses set `tools` (OpenAI function schemas) if they offer any."""

    tools: ClassVar[list[dict[str, Any]]] = []

    @abstractmethod
    def reset(self, row: dict[str, Any]) -> list[Message]:
        """The episode's first messages, from its data row."""

    @abstractmethod
    def step(self, action: Action) -> Observation:
        """The environment's answer to one model turn."""


Tool = Callable[..., Any]


class ToolEnvironment(Environment):
    """Answers tool calls until a turn makes none; that turn's `final_reward` ends it."""

    def __init__(self) -> None:
        self.row: dict[str, Any] = {}

    @property
    def functions(self) -> dict[str, Tool]:
        """The tools by name: each called with the call's arguments as keywords."""
        return {}

    def reset(self, row: dict[str, Any]) -> list[Message]:
        self.row = row
        return list(row["messages"]) if "messages" in row else [{"role": "user", "content": row["prompt"]}]

    @abstractmethod
    def final_reward(self, action: Action) -> float:
        """The score of the turn that answers without calling a tool."""

    def step(self, action: Action) -> Observation:
        if not action.calls and not action.malformed:
            return Observation([], self.final_reward(action), done=True)
        replies = [self._error(f"your tool call could not be read: {bad.problem}") for bad in action.malformed]
        replies += [self._answer(call) for call in action.calls]
        errors = sum(reply["error"] for reply in replies)
        messages = [{"role": "tool", "name": reply["name"], "content": reply["content"]} for reply in replies]
        return Observation(messages, info={"tool_calls": len(action.calls), "tool_errors": errors})

    def _answer(self, call: ToolCall) -> dict[str, Any]:
        function = self.functions.get(call.name)
        if function is None:
            return self._error(f"there is no tool named {call.name!r}; the tools are {sorted(self.functions)}", call.name)
        try:
            result = function(**call.arguments)
        except TypeError as error:  # the model's arguments do not fit the tool's signature
            return self._error(f"{call.name} cannot take these arguments: {error}", call.name)
        except (ArithmeticError, ValueError) as error:  # the tool's own refusal, shown to the model
            return self._error(f"{call.name} failed: {error}", call.name)
        content = result if isinstance(result, str) else json.dumps(result)
        return {"name": call.name, "content": content, "error": False}

    @staticmethod
    def _error(message: str, name: str = "error") -> dict[str, Any]:
        return {"name": name, "content": f"error: {message}", "error": True}


CALCULATOR_SCHEMA = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates an arithmetic expression of numbers, + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example (12 + 7) * 3"}},
            "required": ["expression"],
        },
    },
}

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}
MAX_EXPRESSION_CHARACTERS = 200
MAX_EXPONENT = 64
"""An exponent above this is refused: ``9**9**9`` would hold the environment for minutes."""


def evaluate_arithmetic(expression: str) -> int | float:
    """The value of an arithmetic expression (numbers, + - * / // % **, unary signs,
    parentheses), read with `ast` and never ``eval``: a name, a call or an attribute is
    refused with a ValueError, as is an exponent above MAX_EXPONENT."""
    if len(expression) > MAX_EXPRESSION_CHARACTERS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARACTERS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"{expression!r} is not an arithmetic expression") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponents above {MAX_EXPONENT} are refused")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"only numbers and + - * / // % ** are allowed, not {ast.unparse(node)!r}")

    result = value(tree.body)
    return int(result) if isinstance(result, float) and result.is_integer() else result


ANSWER_GRADERS: dict[str, Callable[..., Any]] = {"leading": score_arithmetic, "final_number": score_final_number}
"""How `CalculatorEnvironment` reads a final answer: the number it starts with (a tiny
model's bare ``3108``), or the answer a chat model writes in a sentence
(``The product is 3,108.``, roles.rewards.final_answer)."""


class CalculatorEnvironment(ToolEnvironment):
    """The arithmetic task with a calculator: the row's ``prompt`` (or ``messages``) and
    ``ground_truth`` (as examples/arith/data rows); the final answer is scored by
    `answer`, one of `ANSWER_GRADERS` (an environment's ``args: {answer: final_number}``)."""

    tools = [CALCULATOR_SCHEMA]

    def __init__(self, answer: str = "leading") -> None:
        super().__init__()
        if answer not in ANSWER_GRADERS:
            raise ValueError(f"answer must be one of {sorted(ANSWER_GRADERS)}, not {answer!r}")
        self.grade = ANSWER_GRADERS[answer]

    @property
    def functions(self) -> dict[str, Tool]:
        return {"calculator": lambda expression: evaluate_arithmetic(str(expression))}

    def final_reward(self, action: Action) -> float:
        return self.grade(self.row.get("prompt", ""), action.content, self.row["ground_truth"]).score


class NumberGuessingGame(Environment):
    """Guess the row's ``secret`` in [``low``, ``high``] (defaults 1 and 100) within
    ``max_guesses`` (default 7) turns; each wrong guess is answered "higher" or "lower"."""

    _NUMBER = re.compile(r"-?\d+")

    def __init__(self) -> None:
        self.secret = self.low = self.high = self.max_guesses = self.guesses = 0

    def reset(self, row: dict[str, Any]) -> list[Message]:
        self.secret, self.low, self.high = int(row["secret"]), int(row.get("low", 1)), int(row.get("high", 100))
        self.max_guesses, self.guesses = int(row.get("max_guesses", 7)), 0
        if not self.low <= self.secret <= self.high:
            raise ValueError(f"the secret {self.secret} is outside [{self.low}, {self.high}]")
        return [{"role": "user", "content": f"Guess my number between {self.low} and {self.high}. "
                                            "Answer with one number each turn."}]

    def step(self, action: Action) -> Observation:
        self.guesses += 1
        found = self._NUMBER.search(action.content)
        guess = int(found.group()) if found else None
        if guess == self.secret:
            return Observation([], 1.0, done=True, info={"guesses": self.guesses})
        if self.guesses >= self.max_guesses:
            return Observation([], 0.0, done=True, info={"guesses": self.guesses})
        hint = "Answer with a number." if guess is None else ("Higher." if guess < self.secret else "Lower.")
        return Observation([{"role": "user", "content": hint}], info={"guesses": self.guesses})
