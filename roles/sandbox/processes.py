"""The harness processes of one sandboxed run: started, handed their spec, supervised.

`Sandboxes` owns one run's temporary directory, each harness's directory and pipes,
and, through `roles.sandbox.reaping`, their uids and their end. `roles.sandbox.runner`
says what runs where and why (the threat model); the harness's side of the pipes is
`roles.sandbox.harness`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roles.sandbox.config import MIB, SandboxConfig
from roles.sandbox.reaping import UIDS, kill_everything, wait_without_reaping

TROUPE_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {str(TROUPE_ROOT)!r}); "
    "from roles.sandbox.harness.main import main; del sys.path[0]; main()"
)
"""What ``python -I -S -c`` runs: ``-I`` leaves troupe's root off ``sys.path``, so the
harness's modules are imported from there, and the path taken off again before any
program runs (a program's imports resolve as they would without troupe)."""
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_TAIL_BYTES = 2000
JUDGE_GRACE_S = 1.0
"""Past the time limit, the judge's own deadline has passed; it gets this long to write its verdict."""


class Harness:
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


class Sandboxes:
    """The harness processes of one run: their directories (under one temporary
    directory, removed afterwards), their uids (one each when started as root), and
    their end: every process of the run is killed before the context exits."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.infra_error: str | None = None
        self.nonce = secrets.token_hex(16)
        """Keys the HMAC of the run's verdict; reaches only the harness that writes it."""
        self.harnesses: list[Harness] = []
        self._uids: list[int] = []
        self._directory: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Sandboxes:
        try:
            self._directory = tempfile.TemporaryDirectory(prefix="troupe-sandbox-", dir=self.config.root_dir)
        except OSError as error:  # a full disk or a missing root_dir is the machine's fault
            self.infra_error = f"could not create the sandbox directory: {error}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for harness in self.harnesses:
                if harness.process is not None:
                    kill_everything(harness.process, harness.uid)
        finally:
            for uid in self._uids:
                UIDS.release(uid)
            if self._directory is not None:
                self._directory.cleanup()

    def start(self, role: str, spec: dict, *, stdin: str = "", pipes: dict | None = None, verdict: bool = False) -> Harness:
        """Start one harness process; its set-up report is read by `supervise`.

        Raises nothing for the machine's failures: they become ``infra_error`` and the
        harness is left unstarted (`supervise` reports it).
        """
        uid = UIDS.reserve(self.config.uid_range) if os.geteuid() == 0 else None
        if uid is not None:
            self._uids.append(uid)
        assert self._directory is not None
        harness = Harness(Path(self._directory.name) / f"{role}-{len(self.harnesses)}", uid)
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
                [config.python_executable or sys.executable, "-I", "-S", "-c", BOOTSTRAP,
                 str(spec_read), str(status_write)],
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

    def supervise(self, harnesses: list[Harness], waiting_for: Harness) -> tuple[dict, bool, float]:
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
        exited = wait_without_reaping(waiting_for.process.pid, config.time_limit_s + grace)
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
