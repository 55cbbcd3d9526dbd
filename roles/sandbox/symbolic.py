"""math-verify answer checks under a time limit that works from any thread.

Why a child process: math-verify parses with sympy, which can run for minutes on a
pathological answer, and a Python thread cannot be interrupted. math-verify's own
limit, ``signal.alarm``, only works in the main thread, while role processes call
rewards from a worker thread. So each check is sent to a long-lived child process
(`roles.sandbox.symbolic_worker`, which turns math-verify's limit off); if no reply
arrives within the time limit, the child is killed (SIGKILL) and the check reports
`SymbolicVerdict.TIMED_OUT`. The next check starts a fresh child. Every check, from
the reading of the answer to the verdict, runs there: a hostile response cannot
hold the caller longer than its time limit.

Why ``subprocess`` rather than ``multiprocessing``: a ``spawn``/``forkserver``
child re-imports the parent's ``__main__`` module (a role's entry point, with
torch), and ``fork`` is unsafe in a threaded process. The worker is a fresh
``python -c "from roles.sandbox.symbolic_worker import main; main()"`` that
imports only math-verify (with sympy) and its own module, and the protocol is one
JSON line each way, so nothing is unpickled. Waiting for a reply uses ``select`` on the pipe: POSIX
only, like the rest of troupe.

Checks on one `SymbolicEquivalenceChecker` are serialised by a lock (a reward
role scores from one thread); a caller waits at most for the checks queued
before it, each bounded by its own time limit. The start-up of a worker
(importing math-verify and sympy, about two seconds) is not counted against the time limit.

Call `shutdown_symbolic_workers` (also registered with ``atexit``) to stop the
shared worker; tests do so in a fixture.
"""

from __future__ import annotations

import atexit
import enum
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

STARTUP_TIMEOUT_S = 60.0
"""How long a new worker may take to import math-verify and report ready."""

_STOP_GRACE_S = 2.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_WORKER_COMMAND = "from roles.sandbox.symbolic_worker import main; main()"


class SymbolicVerdict(enum.Enum):
    """The outcome of one symbolic check."""

    EQUIVALENT = "equivalent"
    DIFFERENT = "different"  # also: an answer math-verify could not read
    TIMED_OUT = "timed_out"
    WORKER_DIED = "worker_died"  # e.g. the worker hit its memory cap


class SymbolicCheck(NamedTuple):
    """A verdict, the answer math-verify read (None: none, or no reply) and a short
    human-readable reason (empty when obvious)."""

    verdict: SymbolicVerdict
    extracted: str | None = None
    detail: str = ""


class SymbolicEquivalenceChecker:
    """Runs `symbolic_worker.check_answer` in a killable child process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._unread = bytearray()
        self._next_request_id = 0

    @property
    def worker_pid(self) -> int | None:
        """The pid of the current worker process, None when none is running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def check(self, gold: str, answer: str, timeout_s: float, symbolic: bool = True) -> SymbolicCheck:
        """Whether ``answer`` states ``gold`` (`symbolic_worker.check_answer`), within ``timeout_s`` seconds.

        Args:
            gold: the reference answer, LaTeX or a number.
            answer: the text holding the answer (a response, or the part a reward chose).
            timeout_s: the most seconds the check itself (reading and comparing) may take.
            symbolic: False compares the parsed answers without simplification.

        Raises:
            ValueError: ``timeout_s`` is not positive.
            RuntimeError: a worker could not be started.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        with self._lock:
            process = self._running_worker()
            self._next_request_id += 1
            request_id = self._next_request_id
            request = {"id": request_id, "gold": gold, "answer": answer, "symbolic": symbolic}
            try:
                process.stdin.write(json.dumps(request).encode() + b"\n")
                process.stdin.flush()
            except BrokenPipeError:  # the worker died between checks; report it, start afresh next time
                self._stop_worker()
                return SymbolicCheck(SymbolicVerdict.WORKER_DIED, detail="the worker exited before the check")
            line = self._read_line(process, time.monotonic() + timeout_s)
            if line is None:
                self._stop_worker()
                return SymbolicCheck(SymbolicVerdict.TIMED_OUT, detail=f"no verdict within {timeout_s} s")
            if line == b"":
                self._stop_worker()
                return SymbolicCheck(SymbolicVerdict.WORKER_DIED, detail=f"the worker exited with code {process.returncode}")
            reply = json.loads(line)
            if reply.get("id") != request_id:
                raise RuntimeError(f"symbolic worker answered request {reply.get('id')}, expected {request_id}")
            verdict = SymbolicVerdict.EQUIVALENT if reply["equivalent"] else SymbolicVerdict.DIFFERENT
            return SymbolicCheck(verdict, reply["extracted"], reply["error"] or "")

    def close(self) -> None:
        """Stop the worker process, if any. The checker stays usable."""
        with self._lock:
            self._stop_worker()

    def _running_worker(self) -> subprocess.Popen[bytes]:
        if self._owner_pid != os.getpid():
            # This process was forked from the one that started the worker: the
            # pipes belong to the parent; start our own worker and leave that one alone.
            self._process, self._unread, self._owner_pid = None, bytearray(), os.getpid()
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop_worker()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND],
            env=_worker_environment(),
            cwd=_PACKAGE_ROOT,  # the worker writes no files; this keeps a foreign "roles" in the cwd out of its path
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._process = process
        ready = self._read_line(process, time.monotonic() + STARTUP_TIMEOUT_S)
        if ready is None or ready == b"" or json.loads(ready) != {"ready": True}:
            self._stop_worker()
            raise RuntimeError(
                f"the symbolic worker ({sys.executable} -c {_WORKER_COMMAND!r}) did not "
                f"start within {STARTUP_TIMEOUT_S} s (got {ready!r}); check that math-verify is installed "
                "in this environment (its error, if any, is on stderr)"
            )
        return process

    def _read_line(self, process: subprocess.Popen[bytes], deadline: float) -> bytes | None:
        """One line from the worker; None at the deadline, b"" when its stdout closed."""
        descriptor = process.stdout.fileno()
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([descriptor], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(descriptor, 65536)
            if not chunk:
                return b""
            self._unread += chunk
        line, _, rest = self._unread.partition(b"\n")
        self._unread = bytearray(rest)
        return bytes(line)

    def _stop_worker(self) -> None:
        process, self._process, self._unread = self._process, None, bytearray()
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=_STOP_GRACE_S)
        process.stdin.close()
        process.stdout.close()


def _worker_environment() -> dict[str, str]:
    """This environment, with troupe's root first on PYTHONPATH so the worker finds
    ``roles`` even when troupe is not installed."""
    search_path = [str(_PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(search_path)}


_shared_checker: SymbolicEquivalenceChecker | None = None
_shared_checker_lock = threading.Lock()


def shared_symbolic_checker() -> SymbolicEquivalenceChecker:
    """The process-wide checker used by the math rewards (created on first use)."""
    global _shared_checker
    with _shared_checker_lock:
        if _shared_checker is None:
            _shared_checker = SymbolicEquivalenceChecker()
        return _shared_checker


def shutdown_symbolic_workers() -> None:
    """Stop the shared checker's worker process; a later check starts a new one."""
    with _shared_checker_lock:
        checker = _shared_checker
    if checker is not None:
        checker.close()


atexit.register(shutdown_symbolic_workers)
