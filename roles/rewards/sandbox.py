"""Run an untrusted Python program in sandboxed subprocesses, and judge it against tests.

The one module among the reward functions that starts processes. Each sandbox is
`sandbox_harness.py` started as ``python -I -S`` in a new session and supervised
from here. `run_in_sandbox` runs a program once (stdin/stdout cases: the caller
compares its output); `run_with_tests` runs a program in one sandbox and the tests
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
import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import psutil
from pydantic import BaseModel, ConfigDict, Field, model_validator

HARNESS = Path(__file__).with_name("sandbox_harness.py")
TIME_LIMIT_TEXT = "time limit exceeded"
"""The judge's verdict text for running out of time (sandbox_harness.TIME_LIMIT_TEXT)."""
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
MIB = 1 << 20
STDERR_TAIL_BYTES = 2000
VERDICT_LIMIT_BYTES = MIB
KILL_DEADLINE_S = 5.0
JUDGE_GRACE_S = 1.0
"""Past the time limit, the judge's own deadline has passed; it gets this long to write its verdict."""


class SandboxConfig(BaseModel):
    """Limits and placement of one sandboxed run."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    time_limit_s: float = Field(default=5.0, gt=0)
    """Wall-clock seconds a run may take once the sandbox is up: the program plus all
    its assert tests, or the program on one stdin case. RLIMIT_CPU is this, rounded
    up, plus one second."""
    startup_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds the sandbox may take to come up (interpreter, namespaces, site-packages)
    before the run is reported unscored. Not counted in ``time_limit_s``."""
    memory_limit_mb: int = Field(default=1024, gt=0)
    """Address space of each process of the run (RLIMIT_AS), in MiB."""
    max_processes: int = Field(default=32, gt=0)
    """Threads and processes the run may have at once (RLIMIT_NPROC, which Linux counts
    in threads). Enforced only when the run has its own uid or the caller is not root."""
    file_size_limit_mb: int = Field(default=16, gt=0)
    """Largest file the program may write (RLIMIT_FSIZE), in MiB; also the size of each
    private tmpfs (work directory, /tmp, ...)."""
    max_open_files: int = Field(default=256, gt=0)
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    max_output_bytes: int = Field(default=MIB, gt=0)
    """Bytes of the program's stdout kept; the rest is cut (and so fails a comparison)."""
    python_executable: str | None = None
    """Interpreter that runs the harness and the program; None: the current one. It must
    be readable by the sandbox uid (a mount namespace makes a 0700 home readable)."""
    site_packages: bool = True
    """Let the program import the interpreter's third-party packages (numpy, ...).
    False starts faster and offers the standard library only."""
    root_dir: str | None = None
    """Directory that holds the per-run directories; None: the system temp directory."""
    uid_range: tuple[int, int] = (900_000_000, 1_000_000_000)
    """Half-open range of uids (and gids) runs get when started as root, one per live
    run. No account may use them; in a user namespace they must be mapped."""

    @model_validator(mode="after")
    def _check_uid_range(self) -> SandboxConfig:
        low, high = self.uid_range
        if not 0 < low < high:
            raise ValueError(f"uid_range must be (low, high) with 0 < low < high, got {self.uid_range}")
        return self


@dataclass(frozen=True)
class SandboxRun:
    """What one run produced.

    Attributes:
        infra_error: the sandbox itself failed (could not start or set up, did not come
            up in time); nothing is known about the program. Every other field is empty.
        completed: the harness wrote a verdict signed with this run's nonce.
        program_error: the program raised or exited non-zero (``completed`` only).
        test_errors: one entry per test snippet, None for a pass (``completed`` and no
            ``program_error`` only; empty otherwise).
        timed_out: the wall clock ran out and the run was killed.
        stdout: the program's standard output, decoded, at most ``max_output_bytes``.
        stderr_tail: the end of its standard error.
        seconds: wall time from ready to exit (or kill).
        network_isolated, filesystem_isolated, privileges_dropped: which layers took
            effect; ``isolation_notes`` says why a layer is missing.
    """

    infra_error: str | None = None
    completed: bool = False
    program_error: str | None = None
    test_errors: tuple[str | None, ...] = ()
    timed_out: bool = False
    stdout: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0
    network_isolated: bool = False
    filesystem_isolated: bool = False
    privileges_dropped: bool = False
    isolation_notes: tuple[str, ...] = ()


class _UidPool:
    """Gives each live run its own uid, so that RLIMIT_NPROC and the final kill count
    and reach that run's processes only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[int] = set()

    def reserve(self, uid_range: tuple[int, int]) -> int:
        low, high = uid_range
        with self._lock:
            while True:
                # secrets, not random: reward processes seeded alike must not collide.
                uid = low + secrets.randbelow(high - low)
                if uid not in self._in_use:
                    self._in_use.add(uid)
                    return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)


_UIDS = _UidPool()


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
    with _Sandboxes(config) as sandboxes:
        if sandboxes.infra_error is not None:
            return SandboxRun(infra_error=sandboxes.infra_error)
        nonce = secrets.token_hex(16)
        run = sandboxes.start("program", {"nonce": nonce, "program": program, "module_name": module_name},
                              stdin=stdin, verdict=True)
        report, timed_out, seconds = sandboxes.supervise([run], waiting_for=run)
        if "error" in report:
            return SandboxRun(infra_error=report["error"], stderr_tail=run.tail("stderr"))
        verdict = _read_verdict(run.path("verdict"), nonce, 0)
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
        RuntimeError: a process of the run survived SIGKILL for ``KILL_DEADLINE_S``.
    """
    with _Sandboxes(config) as sandboxes:
        if sandboxes.infra_error is not None:
            return SandboxRun(infra_error=sandboxes.infra_error)
        nonce = secrets.token_hex(16)
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        try:
            candidate = sandboxes.start(
                "candidate", {"program": program, "module_name": module_name},
                pipes={"requests": requests_read, "replies": replies_write},
            )
            judge = sandboxes.start(
                "judge", {"nonce": nonce, "tests": list(tests), "time_limit_s": config.time_limit_s},
                pipes={"requests": requests_write, "replies": replies_read}, verdict=True,
            )
        finally:
            for descriptor in (requests_read, requests_write, replies_read, replies_write):
                os.close(descriptor)
        report, timed_out, seconds = sandboxes.supervise([candidate, judge], waiting_for=judge)
        if "error" in report:
            return SandboxRun(infra_error=report["error"], stderr_tail=candidate.tail("stderr") + judge.tail("stderr"))
        verdict = _read_verdict(judge.path("verdict"), nonce, len(tests))
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


class _Harness:
    """One harness process of a run, its directory (work/, stdin, stdout, stderr,
    verdict) and the pipes the parent talks to it over."""

    def __init__(self, outer: Path, uid: int | None) -> None:
        self.outer, self.uid = outer, uid
        self.process: subprocess.Popen | None = None
        self.spec: dict = {}
        self.spec_write = self.status_read = -1

    def path(self, name: str) -> Path:
        return self.outer / name

    def head(self, name: str, limit: int) -> str:
        try:
            with open(self.path(name), "rb") as output:
                return output.read(limit).decode("utf-8", "replace")
        except FileNotFoundError:  # the harness was never started
            return ""

    def tail(self, name: str) -> str:
        try:
            with open(self.path(name), "rb") as output:
                output.seek(max(0, output.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
                return output.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class _Sandboxes:
    """The harness processes of one run: their directories (under one temporary
    directory, removed afterwards), their uids (one each when started as root), and
    their end: every process of the run is killed before the context exits."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.infra_error: str | None = None
        self.harnesses: list[_Harness] = []
        self._uids: list[int] = []
        self._directory: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> _Sandboxes:
        try:
            self._directory = tempfile.TemporaryDirectory(prefix="troupe-sandbox-", dir=self.config.root_dir)
        except OSError as error:  # a full disk or a missing root_dir is the machine's fault
            self.infra_error = f"could not create the sandbox directory: {error}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for harness in self.harnesses:
                if harness.process is not None:
                    _kill_everything(harness.process, harness.uid)
        finally:
            for uid in self._uids:
                _UIDS.release(uid)
            if self._directory is not None:
                self._directory.cleanup()

    def start(self, role: str, spec: dict, *, stdin: str = "", pipes: dict | None = None, verdict: bool = False) -> _Harness:
        """Start one harness process; its set-up report is read by `supervise`.

        Raises nothing for the machine's failures: they become ``infra_error`` and the
        harness is left unstarted (`supervise` reports it).
        """
        uid = _UIDS.reserve(self.config.uid_range) if os.geteuid() == 0 else None
        if uid is not None:
            self._uids.append(uid)
        assert self._directory is not None
        harness = _Harness(Path(self._directory.name) / f"{role}-{len(self.harnesses)}", uid)
        self.harnesses.append(harness)
        if self.infra_error is not None:
            return harness
        try:
            _prepare(harness.outer, stdin, uid)
        except OSError as error:  # a full disk, a root_dir that refuses chown: the machine's fault
            self.infra_error = f"could not prepare the sandbox directory: {error}"
            return harness
        files = {name: open(harness.path(name), "rb" if name == "stdin" else "wb")
                 for name in ("stdin", "stdout", "stderr", *(["verdict"] if verdict else []))}
        spec_read, spec_write = os.pipe()
        status_read, status_write = os.pipe()
        fds = dict(pipes or {})
        if verdict:
            fds["verdict"] = files["verdict"].fileno()
        config = self.config
        full_spec = {
            **spec,
            "role": role,
            "fds": fds,
            "work_dir": str(harness.path("work")),
            "uid": uid,
            "gid": uid,
            "site_packages": config.site_packages,
            "tmpfs_bytes": config.file_size_limit_mb * MIB,
            "limits": {
                "RLIMIT_CPU": math.ceil(config.time_limit_s) + 1,
                "RLIMIT_AS": config.memory_limit_mb * MIB,
                "RLIMIT_NPROC": config.max_processes,
                "RLIMIT_FSIZE": config.file_size_limit_mb * MIB,
                "RLIMIT_NOFILE": config.max_open_files,
                "RLIMIT_CORE": 0,
            },
        }
        try:
            harness.process = subprocess.Popen(
                [config.python_executable or sys.executable, "-I", "-S", str(HARNESS), str(spec_read), str(status_write)],
                stdin=files["stdin"], stdout=files["stdout"], stderr=files["stderr"],
                pass_fds=(spec_read, status_write, *fds.values()),
                cwd=harness.path("work"), env=_environment(harness.path("work")), start_new_session=True,
            )
        except OSError as error:  # fork or exec failed: no memory, no pids, no interpreter
            os.close(spec_write)
            os.close(status_read)
            self.infra_error = f"could not start the sandbox: {error}"
        else:
            harness.spec_write, harness.status_read, harness.spec = spec_write, status_read, full_spec
        finally:
            os.close(spec_read)
            os.close(status_write)
            for handle in files.values():
                handle.close()
        return harness

    def supervise(self, harnesses: list[_Harness], waiting_for: _Harness) -> tuple[dict, bool, float]:
        """Hand each harness its spec, wait for every set-up report, then give the run its
        time: until `waiting_for` exits or ``time_limit_s`` (plus a second for the judge
        to write its verdict) passes. Returns (the first harness's report, timed_out,
        seconds); a report with ``error`` means the sandbox failed."""
        if self.infra_error is not None:
            for harness in harnesses:
                _close_quietly(harness.spec_write, harness.status_read)
            return {"error": self.infra_error}, False, 0.0
        config = self.config
        startup_deadline = time.monotonic() + config.startup_timeout_s
        reports = []
        try:
            for harness in harnesses:
                handed_over = _write_all(harness.spec_write, json.dumps(harness.spec).encode(), startup_deadline)
                os.close(harness.spec_write)
                harness.spec_write = -1
                if not handed_over:
                    return {"error": "the sandbox did not read its spec (it died or hung while starting)"}, False, 0.0
            for harness in harnesses:
                status = _read_to_end(harness.status_read, startup_deadline)
                if status is None:
                    return {"error": f"the sandbox did not come up within {config.startup_timeout_s} s"}, False, 0.0
                if not status:
                    return {"error": "the sandbox exited during set-up without a report"}, False, 0.0
                report = json.loads(status)
                if "error" in report:
                    return report, False, 0.0
                reports.append(report)
        finally:
            for harness in harnesses:
                _close_quietly(harness.spec_write, harness.status_read)
                harness.spec_write = harness.status_read = -1
        started = time.monotonic()
        grace = JUDGE_GRACE_S if len(harnesses) > 1 else 0.0
        assert waiting_for.process is not None
        exited = _wait_without_reaping(waiting_for.process.pid, config.time_limit_s + grace)
        return reports[0], not exited, time.monotonic() - started


def _close_quietly(*descriptors: int) -> None:
    for descriptor in descriptors:
        if descriptor >= 0:
            os.close(descriptor)


def _prepare(outer: Path, stdin: str, uid: int | None) -> None:
    outer.mkdir()
    work = outer / "work"
    work.mkdir(mode=0o700)
    outer.chmod(0o711)  # without a mount namespace the sandbox uid must reach work/ by path
    if uid is not None:
        os.chown(work, uid, uid)
    (outer / "stdin").write_text(stdin, encoding="utf-8")


def _environment(work: Path) -> dict[str, str]:
    thread_caps = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # One thread per numeric library: RLIMIT_NPROC counts threads, and a verdict must
    # not depend on how many cores the machine has.
    return {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": str(work), **thread_caps}


def _write_all(fd: int, data: bytes, deadline: float) -> bool:
    os.set_blocking(fd, False)
    while data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            return False
        try:
            data = data[os.write(fd, data) :]
        except BrokenPipeError:  # the harness died before reading: reported by the caller
            return False
    return True


def _read_to_end(fd: int, deadline: float) -> bytes | None:
    """Everything written to the pipe until its writer closes it; None past the deadline."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit but leave it a zombie: its pid, and so its process group
    id, cannot be reused by an unrelated process before the group is killed."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # kernels before 5.3 have no pidfd: poll instead
        deadline = time.monotonic() + timeout
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _kill_everything(process: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # every process of the group had already exited
    process.wait()
    if uid is not None:
        _kill_processes_of(uid)


def _kill_processes_of(uid: int) -> None:
    """SIGKILL every process running as ``uid`` until none is left: those that left the
    process group (setsid) too. Only this run's processes have this uid."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while True:
        alive = [
            process
            for process in psutil.process_iter(["uids", "status", "num_threads"])
            if process.info["uids"] is not None and uid in process.info["uids"] and not _has_exited(process.info)
        ]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox processes {[p.pid for p in alive]} of uid {uid} survived SIGKILL")
        for process in alive:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass  # exited between the listing and the signal
        time.sleep(0.01)


def _has_exited(info: dict) -> bool:
    """A zombie with no thread left. A leader that ended its own thread (pthread_exit)
    shows as a zombie while its other threads run on: that process is still alive."""
    return info["status"] == psutil.STATUS_ZOMBIE and (info["num_threads"] or 0) <= 1


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
