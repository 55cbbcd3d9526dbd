"""The limits of a sandboxed run (`SandboxConfig`) and what one produced (`SandboxRun`)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1 << 20


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
