"""Run an untrusted Python program against tests in a sandboxed subprocess.

The one module among the reward functions that starts processes. `run_in_sandbox`
starts `sandbox_harness.py` (``python -I -S``) in a new session and supervises it:

- isolation, applied by the harness before the program runs, each layer where the
  machine permits it and reported in `SandboxRun`: a new network namespace (no
  interfaces but a loopback that is down); a new mount namespace with private,
  size-limited tmpfs over the work directory, /tmp, /var/tmp, /dev/shm and
  /run/lock; when started as root, a uid of its own (never shared with another
  live sandbox), so RLIMIT_NPROC applies and every process of the run can be found
  and killed; rlimits on CPU time, address space, processes, file size, open files
  and core dumps; no_new_privs; a seccomp filter that makes setsid and setpgid
  fail, so no process of the run leaves its process group. Started as root, a run
  that cannot drop privileges is unscored, never run as root.
- a scrubbed environment (PATH, LANG, HOME = the work directory, one thread per
  numeric library) and a private work directory, removed afterwards;
- a wall clock: once the harness reports ready, the run has ``time_limit_s``; then
  SIGKILL goes to the whole process group, and, when the run had its own uid, to
  every process of that uid (one that left the group where seccomp is missing),
  until none is left.
- the verdict is read from a file the harness writes last, signed with an HMAC keyed
  by a random nonce that reaches the harness through a pipe it closes before the
  program starts; never from the exit status. The nonce itself is never written: a
  process of the run can read the verdict file before it is killed, but learns only
  a tag for the true verdict. A program that exits early, prints ``PASS`` or writes
  a fake verdict scores nothing.

Threat model, honestly: the program runs in the harness's interpreter (assert tests
must call its functions), so a program that deliberately reads the harness's memory
(frames, gc, ctypes) can find the nonce and forge a verdict, and an object whose
``__eq__`` always returns True passes ``assert f(x) == y``. Stdin/stdout cases do not
have this weakness: the expected output never enters the sandbox and the parent
compares. Not covered: an aggregate memory cap over all processes of a run (each has
RLIMIT_AS), and hiding world-readable files (the program can read what any user can).
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
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
MIB = 1 << 20
STDERR_TAIL_BYTES = 2000
VERDICT_LIMIT_BYTES = MIB
KILL_DEADLINE_S = 5.0


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
    tests: Sequence[str] = (),
    stdin: str = "",
    module_name: str = "__main__",
) -> SandboxRun:
    """Run ``program``, then each of ``tests`` in its namespace, in a fresh sandbox.

    Args:
        program: Python source of the program under test.
        config: limits and placement.
        tests: Python snippets run in order after the program, each one test; a test
            passes when it runs without raising.
        stdin: the program's standard input.
        module_name: ``__name__`` of the program: ``"__main__"`` runs its
            ``if __name__ == "__main__":`` block, another name skips it.

    Raises:
        RuntimeError: a process of the run survived SIGKILL for ``KILL_DEADLINE_S``.
    """
    uid = _UIDS.reserve(config.uid_range) if os.geteuid() == 0 else None
    try:
        try:
            directory = tempfile.TemporaryDirectory(prefix="troupe-sandbox-", dir=config.root_dir)
        except OSError as error:  # a full disk or a missing root_dir is the machine's fault
            return SandboxRun(infra_error=f"could not create the sandbox directory: {error}")
        with directory:
            outer = Path(directory.name)
            try:
                _prepare(outer, stdin, uid)
            except OSError as error:  # a full disk, a root_dir that refuses chown: the machine's fault
                return SandboxRun(infra_error=f"could not prepare the sandbox directory: {error}")
            return _run(outer, program, list(tests), module_name, uid, config)
    finally:
        if uid is not None:
            _UIDS.release(uid)


def _prepare(outer: Path, stdin: str, uid: int | None) -> None:
    work = outer / "work"
    work.mkdir(mode=0o700)
    outer.chmod(0o711)  # without a mount namespace the sandbox uid must reach work/ by path
    if uid is not None:
        os.chown(work, uid, uid)
    (outer / "stdin").write_text(stdin, encoding="utf-8")


def _run(
    outer: Path, program: str, tests: list[str], module_name: str, uid: int | None, config: SandboxConfig
) -> SandboxRun:
    work = outer / "work"
    nonce = secrets.token_hex(16)
    spec = {
        "nonce": nonce,
        "program": program,
        "tests": tests,
        "module_name": module_name,
        "work_dir": str(work),
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
    with (
        open(outer / "stdin", "rb") as stdin_file,
        open(outer / "stdout", "wb") as stdout_file,
        open(outer / "stderr", "wb") as stderr_file,
        open(outer / "verdict", "wb") as verdict_file,
    ):
        spec_read, spec_write = os.pipe()
        status_read, status_write = os.pipe()
        try:
            process = subprocess.Popen(
                [config.python_executable or sys.executable, "-I", "-S", str(HARNESS)]
                + [str(spec_read), str(status_write), str(verdict_file.fileno())],
                stdin=stdin_file,
                stdout=stdout_file,
                stderr=stderr_file,
                pass_fds=(spec_read, status_write, verdict_file.fileno()),
                cwd=work,
                env=_environment(work),
                start_new_session=True,
            )
        except OSError as error:  # fork or exec failed: no memory, no pids, no interpreter
            os.close(spec_write)
            os.close(status_read)
            return SandboxRun(infra_error=f"could not start the sandbox: {error}")
        finally:
            os.close(spec_read)
            os.close(status_write)
        try:
            report, timed_out, seconds = _supervise(process, spec, spec_write, status_read, config)
        finally:
            os.close(status_read)
            _kill_everything(process, uid)
    if "error" in report:
        return SandboxRun(infra_error=report["error"], stderr_tail=_tail(outer / "stderr"))
    verdict = _read_verdict(outer / "verdict", nonce, len(tests))
    completed = verdict is not None
    program_error, test_errors = verdict if completed else (None, ())
    return SandboxRun(
        completed=completed,
        program_error=program_error,
        test_errors=test_errors,
        timed_out=timed_out,
        stdout=_head(outer / "stdout", config.max_output_bytes),
        stderr_tail=_tail(outer / "stderr"),
        seconds=seconds,
        network_isolated=report["network_isolated"],
        filesystem_isolated=report["filesystem_isolated"],
        privileges_dropped=report["privileges_dropped"],
        isolation_notes=tuple(report["notes"]),
    )


def _environment(work: Path) -> dict[str, str]:
    thread_caps = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # One thread per numeric library: RLIMIT_NPROC counts threads, and a verdict must
    # not depend on how many cores the machine has.
    return {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": str(work), **thread_caps}


def _supervise(
    process: subprocess.Popen, spec: dict, spec_write: int, status_read: int, config: SandboxConfig
) -> tuple[dict, bool, float]:
    """Hand the spec over, wait for the ready report, then give the program its time.
    Returns (report, timed_out, seconds); a report with ``error`` means infra failure."""
    startup_deadline = time.monotonic() + config.startup_timeout_s
    try:
        handed_over = _write_all(spec_write, json.dumps(spec).encode(), startup_deadline)
    finally:
        os.close(spec_write)
    if not handed_over:
        return {"error": "the sandbox did not read its spec (it died or hung while starting)"}, False, 0.0
    status = _read_to_end(status_read, startup_deadline)
    if status is None:
        return {"error": f"the sandbox did not come up within {config.startup_timeout_s} s"}, False, 0.0
    if not status:
        return {"error": "the sandbox exited during set-up without a report"}, False, 0.0
    report = json.loads(status)
    if "error" in report:
        return report, False, 0.0
    started = time.monotonic()
    exited = _wait_without_reaping(process.pid, config.time_limit_s)
    return report, not exited, time.monotonic() - started


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


def _head(path: Path, limit: int) -> str:
    with open(path, "rb") as output:
        return output.read(limit).decode("utf-8", "replace")


def _tail(path: Path) -> str:
    with open(path, "rb") as output:
        output.seek(max(0, output.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
        return output.read().decode("utf-8", "replace")
