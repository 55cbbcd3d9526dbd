"""Run an untrusted Python program in sandboxed subprocesses, and judge it against tests.

The entry points of the sandbox, and its threat model. Each sandbox is the harness
(`roles.sandbox.harness`) started as ``python -I -S`` in a new session and supervised
by `roles.sandbox.processes`. `run_in_sandbox` runs a program once (stdin/stdout
cases: the caller compares its output); `run_with_tests` runs a program in one sandbox and the tests
in another, the *judge*, which calls the program over two pipes and gets back plain
values only, so a pass is decided by code the program cannot reach (the harness's
docstring has the protocol).

- isolation, applied by the harness before any program or test runs, each layer
  where the machine permits it and reported in `SandboxRun`: a new network
  namespace (no interfaces but a loopback that is down); a new mount namespace with
  private, size-limited tmpfs over the work directory, /tmp, /var/tmp, /dev/shm and
  /run/lock; when started as root, a uid of its own per sandbox (never shared with
  another live sandbox: the judge's differs from the program's), so RLIMIT_NPROC
  applies and every process of the run can be found and killed; rlimits on CPU
  time, address space, processes, file size, open files and core dumps;
  no_new_privs; a seccomp filter that makes setsid and setpgid fail, so no process
  of the run leaves its process group; the judge is not dumpable.
- a scrubbed environment (PATH, LANG, HOME = the work directory, one thread per
  numeric library) and a private work directory per sandbox, removed afterwards;
- a wall clock: once every sandbox reports ready, the run has ``time_limit_s`` (the
  judge a second more to write its verdict); then SIGKILL goes to each process
  group, and, for a sandbox with its own uid, to every process of that uid (one that
  left the group where seccomp is missing), until none is left.
- the verdict is read from a file the harness writes last, signed with an HMAC keyed
  by a random nonce that reaches the harness through a pipe it closes before any
  untrusted code starts; never from the exit status. The nonce itself is never
  written. The program's sandbox never holds the nonce of a run with tests.

Threat model: the program is an adversary with full Python (it may patch builtins,
the harness and assert, return objects that equal everything, read its own memory,
fork, exit early, flood output, ignore signals). It decides nothing: the judge
compares plain values it rebuilt itself, and the parent compares stdout. Not
covered: an aggregate memory cap over all processes of a run (each has RLIMIT_AS);
hiding world-readable files (the program can read what any user can); and, run as a
normal user, a program can kill the judge (which then fails every test, never
passes one). docs/rewards.md has the details and the attack suite's list.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence, TypeVar

from roles.sandbox.config import MIB, SandboxConfig, SandboxRun
from roles.sandbox.harness.wire import TIME_LIMIT_TEXT
from roles.sandbox.processes import Sandboxes

VERDICT_LIMIT_BYTES = MIB
Item = TypeVar("Item")
Result = TypeVar("Result")


def run_in_sandbox(
    program: str,
    config: SandboxConfig,
    *,
    stdin: str = "",
    module_name: str = "__main__",
) -> SandboxRun:
    """Run ``program`` once in a fresh sandbox, on ``stdin`` (for stdin/stdout cases:
    the caller compares ``stdout``; the verdict only says whether it ended normally).

    Args:
        program: Python source of the program under test.
        config: limits and placement.
        stdin: the program's standard input.
        module_name: ``__name__`` of the program: ``"__main__"`` runs its
            ``if __name__ == "__main__":`` block, another name skips it.

    Raises:
        RuntimeError: a process of the run survived SIGKILL for ``KILL_DEADLINE_S``.
    """
    with Sandboxes(config) as sandboxes:
        if sandboxes.infra_error is not None:
            return SandboxRun(infra_error=sandboxes.infra_error)
        run = sandboxes.start("program", {"nonce": sandboxes.nonce, "program": program, "module_name": module_name},
                              stdin=stdin, verdict=True)
        report, timed_out, seconds = sandboxes.supervise([run], waiting_for=run)
        if "error" in report:
            return SandboxRun(infra_error=report["error"], stderr_tail=run.tail("stderr"))
        verdict = _read_verdict(run.path("verdict"), sandboxes.nonce, 0)
        return SandboxRun(
            completed=verdict is not None, program_error=verdict[0] if verdict is not None else None,
            timed_out=timed_out, stdout=run.head("stdout", config.max_output_bytes), stderr_tail=run.tail("stderr"),
            seconds=seconds, **_isolation_of(report),
        )


def run_with_tests(
    program: str,
    tests: Sequence[str],
    config: SandboxConfig,
    *,
    module_name: str = "solution",
) -> SandboxRun:
    """Run ``program``, then judge each of ``tests`` against it, in two sandboxes.

    The program runs in a *candidate* sandbox; the tests run in a *judge* sandbox of
    their own (its own uid when started as root, never dumpable), which calls the
    program's functions over two pipes and gets back plain values only (the harness
    module's docstring has the protocol). So a pass is decided by the tests' own code
    in a process the program cannot reach: an object that equals everything, a patched
    ``assert`` or builtins, a forged verdict or a read of the harness's memory win
    nothing. A test passes when it runs without raising.

    Args:
        program: Python source of the program under test.
        tests: Python snippets run in order by the judge, each one test; the program's
            top-level names are in scope (a name a test defines itself takes precedence,
            and a standard-library module is always the judge's own).
        config: limits and placement; ``time_limit_s`` covers the program and all tests.
        module_name: ``__name__`` of the program (not ``"__main__"``: its main block is skipped).

    Raises:
        RuntimeError: a process of the program's or the judge's sandbox survived SIGKILL for
            ``KILL_DEADLINE_S``.
    """
    with Sandboxes(config) as sandboxes:
        if sandboxes.infra_error is not None:
            return SandboxRun(infra_error=sandboxes.infra_error)
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        try:
            candidate = sandboxes.start(
                "candidate", {"program": program, "module_name": module_name},
                pipes={"requests": requests_read, "replies": replies_write},
            )
            judge = sandboxes.start(
                "judge", {"nonce": sandboxes.nonce, "tests": list(tests), "time_limit_s": config.time_limit_s},
                pipes={"requests": requests_write, "replies": replies_read}, verdict=True,
            )
        finally:
            for descriptor in (requests_read, requests_write, replies_read, replies_write):
                os.close(descriptor)
        report, timed_out, seconds = sandboxes.supervise([candidate, judge], waiting_for=judge)
        if "error" in report:
            return SandboxRun(infra_error=report["error"], stderr_tail=candidate.tail("stderr") + judge.tail("stderr"))
        verdict = _read_verdict(judge.path("verdict"), sandboxes.nonce, len(tests))
        program_error, test_errors = verdict if verdict is not None else (None, ())
        timed_out = timed_out or TIME_LIMIT_TEXT in (program_error, *test_errors)
        return SandboxRun(
            completed=verdict is not None, program_error=program_error, test_errors=test_errors,
            timed_out=timed_out, stdout=candidate.head("stdout", config.max_output_bytes),
            stderr_tail=candidate.tail("stderr"), seconds=seconds, **_isolation_of(report),
        )


def _isolation_of(report: dict) -> dict:
    return {
        "network_isolated": report["network_isolated"], "filesystem_isolated": report["filesystem_isolated"],
        "privileges_dropped": report["privileges_dropped"], "isolation_notes": tuple(report["notes"]),
    }


def map_concurrently(
    function: Callable[[Item], Result], items: Iterable[Item], max_concurrent: int, thread_name: str
) -> list[Result]:
    """``[function(item) for item in items]``, at most ``max_concurrent`` calls at once,
    one thread each (a call that runs sandboxes mostly waits on them), in order."""
    with ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix=thread_name) as pool:
        return list(pool.map(function, items))


def _read_verdict(path: Path, nonce: str, test_count: int) -> tuple[str | None, tuple[str | None, ...]] | None:
    """(program_error, test_errors) from a verdict signed with ``nonce``; None for anything else."""
    with open(path, "rb") as verdict_file:
        data = verdict_file.read(VERDICT_LIMIT_BYTES + 1)
    tag, _, message = data.partition(b" ")
    expected = hmac.new(nonce.encode(), message, "sha256").hexdigest().encode()
    if len(data) > VERDICT_LIMIT_BYTES or not hmac.compare_digest(tag, expected):
        return None
    lines = message.decode("utf-8", "replace").split("\n")
    if len(lines) < 2 or lines[0] != str(test_count):
        return None
    if lines[1] != "program ok":
        program_error = lines[1].removeprefix("program error ")
        return (program_error, ()) if len(lines) == 2 and lines[1] != program_error else None
    outcomes = lines[2:]
    if len(outcomes) != test_count or not all(line == "pass" or line.startswith("fail ") for line in outcomes):
        return None
    return None, tuple(None if line == "pass" else line.removeprefix("fail ") for line in outcomes)
