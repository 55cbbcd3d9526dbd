"""The child process that checks two expressions for symbolic equivalence.

`roles.rewards.symbolic` starts a Python process that runs `main` and talks to
it over its stdin/stdout, one JSON object per line:

    parent -> worker: {"id": 7, "a": "sqrt(2)/2", "b": "1/sqrt(2)"}
    worker -> parent: {"id": 7, "equivalent": true, "error": null}

The first line the worker writes is ``{"ready": true}``, once sympy is imported.

sympy can take unbounded time (``simplify((x+1)**100000 - x**100000)``) and
cannot be interrupted from another thread, so it runs here, where the parent can
kill it. The worker also caps its own address space (``MEMORY_LIMIT_BYTES``) and
exits on ``MemoryError``, so one pathological answer cannot exhaust the host's
memory; it exits when its parent dies or closes stdin.

Only text made of numbers, single-letter symbols, ``+ - * / ( ) ,`` and the
names in ``SAFE_NAMES`` is parsed (`is_safe_sympy_text`): sympy's parser calls
``eval``, and the text comes from model output. This module imports only the
standard library at import time, so the parent can use `is_safe_sympy_text`
without importing sympy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import string
import sys
import threading
import time
from typing import Any

SAFE_NAMES = frozenset({"sqrt", "pi", "oo", "sin", "cos", "tan", "log", "exp"})
"""The function and constant names a symbolic expression may use."""

MEMORY_LIMIT_BYTES = 4 * 1024**3
"""The worker's address-space cap (RLIMIT_AS), where the platform supports one."""

RELATIVE_TOLERANCE = 1e-9
"""Two constant expressions whose values differ by less than this (relative to
the reference, or absolutely below 1) are equal; it absorbs float round-off in
sympy's numeric evaluation, not decimal approximations written by a model."""

_TOKEN = re.compile(r"[A-Za-z_]+|\d+(?:\.\d+)?|\*\*|\S")
_SAFE_SYMBOLS = frozenset("+-*/(),")
_PARENT_POLL_INTERVAL_S = 0.5


def is_safe_sympy_text(text: str) -> bool:
    """True when ``text`` uses only tokens this worker agrees to parse."""
    for token in _TOKEN.findall(text):
        if token[0].isalpha() or token[0] == "_":
            if token not in SAFE_NAMES and not (len(token) == 1 and token in string.ascii_letters):
                return False
        elif not (token[0].isdigit() or token == "**" or token in _SAFE_SYMBOLS):
            return False
    return True


def expressions_equivalent(text_a: str, text_b: str) -> bool:
    """True when two sympy-syntax expressions are mathematically equal.

    Structural equality first, then ``simplify(a - b) == 0``, then, for
    constants, numeric equality within `RELATIVE_TOLERANCE`. Comma-separated
    tuples are compared element by element.

    Raises:
        ValueError: a text fails `is_safe_sympy_text`.
        SyntaxError, TypeError, sympy errors: the text does not parse.
    """
    expression_a = _parse(text_a)
    expression_b = _parse(text_b)
    if isinstance(expression_a, tuple) or isinstance(expression_b, tuple):
        return (
            isinstance(expression_a, tuple)
            and isinstance(expression_b, tuple)
            and len(expression_a) == len(expression_b)
            and all(_equal(a, b) for a, b in zip(expression_a, expression_b))
        )
    return _equal(expression_a, expression_b)


def _parse(text: str) -> Any:
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if not is_safe_sympy_text(text):
        raise ValueError(f"refusing to parse {text!r}: it contains names outside SAFE_NAMES")
    symbols = {letter: sympy.Symbol(letter) for letter in string.ascii_letters}
    names: dict[str, Any] = {name: getattr(sympy, name) for name in SAFE_NAMES}
    for helper in ("Integer", "Float", "Rational", "Symbol", "Function"):
        names[helper] = getattr(sympy, helper)
    return parse_expr(
        text,
        local_dict=symbols,
        global_dict=names,
        transformations=standard_transformations + (implicit_multiplication_application,),
    )


def _equal(expression_a: Any, expression_b: Any) -> bool:
    import sympy

    if expression_a == expression_b:
        return True
    difference = sympy.simplify(expression_a - expression_b)
    if difference == 0:
        return True
    if difference.free_symbols:
        return False
    try:
        gap = abs(complex(sympy.N(difference, 30)))
        scale = max(1.0, abs(complex(sympy.N(expression_b, 30))))
    except (TypeError, ValueError):  # nan, zoo or a non-numeric constant: not provably equal
        return False
    return gap <= RELATIVE_TOLERANCE * scale


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # no RLIMIT_AS here (Windows, some macOS): run uncapped
        pass


def _exit_when_parent_dies() -> None:
    parent_pid = os.getppid()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    """Serve comparison requests from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    _limit_memory()
    _exit_when_parent_dies()
    import sympy  # noqa: F401  imported before "ready" so the first check is not slowed by it

    replies = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream
    replies.write(b'{"ready": true}\n')
    replies.flush()
    while line := sys.stdin.buffer.readline():
        request = json.loads(line)
        try:
            reply = {"id": request["id"], "equivalent": expressions_equivalent(request["a"], request["b"]), "error": None}
        except MemoryError:
            os._exit(3)  # the parent sees the exit, reports the check unscored and starts a fresh worker
        except Exception as error:  # a malformed expression is an answer ("not equivalent"), not a crash
            reply = {"id": request["id"], "equivalent": False, "error": f"{type(error).__name__}: {error}"[:500]}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    main()
