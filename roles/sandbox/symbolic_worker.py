"""The child process that checks one answer against its reference with math-verify.

`roles.sandbox.symbolic` starts a Python process that runs `main` and talks to it over
its stdin/stdout, one JSON object per line:

    parent -> worker: {"id": 7, "gold": "\\\\frac{1}{2}", "answer": "so \\\\boxed{0.5}", "symbolic": true}
    worker -> parent: {"id": 7, "equivalent": true, "extracted": "\\\\frac{1}{2}", "error": null}

The first line the worker writes is ``{"ready": true}``, once math-verify (and with it
sympy and the antlr LaTeX parser) is imported.

Why a process of its own: math-verify parses LaTeX into sympy and compares with
``simplify``, which can run for minutes on a pathological answer and cannot be
interrupted from another thread. math-verify's own time limit is ``signal.alarm``, which
works only in a process's main thread, while a role scores from a worker thread; so the
worker turns that limit off and the parent kills the worker instead when a check runs
past its deadline. The worker also caps its own address space (``MEMORY_LIMIT_BYTES``)
and exits on ``MemoryError``, and it exits when its parent dies or closes stdin.

What is compared is math-verify's, with its defaults (`check_answer`): the reference is
read as LaTeX (``\\boxed{<gold>}``), the answer text by ``parse``'s default extraction
(LaTeX, then plain expressions and numbers), and ``verify`` decides. math-verify reads
expressions with its antlr grammar and sympy's parser on text its regular expressions
limited to digits and operators, so no model output reaches ``eval`` with names in it.
This module imports only the standard library at import time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

MEMORY_LIMIT_BYTES = 4 * 1024**3
"""The worker's address-space cap (RLIMIT_AS), where the platform supports one."""

_PARENT_POLL_INTERVAL_S = 0.5


def check_answer(gold: str, answer: str, symbolic: bool = True) -> tuple[bool, str | None]:
    """Whether ``answer`` states the reference ``gold``, by math-verify's rules.

    Args:
        gold: the reference answer as LaTeX or a number (``"\\\\frac{1}{2}"``, ``"72"``).
        answer: the text holding the answer: a whole response, or the part of it a
            reward chose (``"\\\\boxed{0.5}"``).
        symbolic: False compares the parsed answers structurally (no simplification):
            ``2x+2`` then differs from ``2(x+1)``.

    Returns:
        ``(equivalent, extracted)``: the verdict and the answer math-verify read
        (None when it read none).
    """
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    answer_parsed = parse(answer, parsing_timeout=None)
    if not answer_parsed:
        return False, None
    extracted = answer_parsed[-1] if isinstance(answer_parsed[-1], str) else str(answer_parsed[0])
    if not symbolic:
        return bool(gold_parsed) and gold_parsed[0] == answer_parsed[0], extracted
    return verify(gold_parsed, answer_parsed, timeout_seconds=None), extracted


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


def _reply(request: dict[str, Any]) -> dict[str, Any]:
    try:
        equivalent, extracted = check_answer(request["gold"], request["answer"], request.get("symbolic", True))
    except MemoryError:
        os._exit(3)  # the parent sees the exit, reports the check unscored and starts a fresh worker
    except Exception as error:  # an answer math-verify cannot read is a wrong answer, not a crash
        return {"id": request["id"], "equivalent": False, "extracted": None, "error": f"{type(error).__name__}: {error}"[:500]}
    return {"id": request["id"], "equivalent": equivalent, "extracted": extracted, "error": None}


def main() -> None:
    """Serve check requests from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    _limit_memory()
    _exit_when_parent_dies()
    import math_verify  # noqa: F401  imported before "ready" so the first check is not slowed by it

    # the parent bounds every check, so math-verify's warnings that its own (signal) time
    # limit is off, and its per-answer parse notes, are noise on the role's stderr
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    replies = sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream
    replies.write(b'{"ready": true}\n')
    replies.flush()
    while line := sys.stdin.buffer.readline():
        replies.write(json.dumps(_reply(json.loads(line))).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    main()
