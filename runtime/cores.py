"""Sharing a host's cores between the processes that compute on it at the same time.

On a small machine the generator and the trainer of an asynchronous run compute at
once. Each sized for every core, their threads outnumber the cores and spin against
each other's work: SmolLM2's async steps took 30-77 s against 12-14 s in sync mode
(docs/benchmarks.md).
Each sized for its own half, a role that computes alone leaves half the machine idle.

A `CoreShare` sizes a process's thread pool by who is computing now. Each process
holds an exclusive `flock` on its own file in a host-wide directory while it computes
(`computing`); `rebalance` counts the files locked and gives this process
``max(1, cores // busy)`` threads. The kernel releases a dead process's lock, so a
crash never leaves a core counted as busy; its empty file is removed by the next count.
Long computations call `rebalance` between their parts (decoding steps, micro-batches)
to grow back when the other process finishes, or shrink when one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_active = threading.local()


def default_directory() -> Path:
    """Where the busy files live: ``$TROUPE_CORES_DIR``, else one directory per user under
    /dev/shm (host-local and in memory), else the temporary directory."""
    if configured := os.environ.get("TROUPE_CORES_DIR"):
        return Path(configured)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"troupe-cores-{os.getuid()}"


class CoreShare:
    """This process's share of `cores`, applied through `set_threads` (for example
    torch.set_num_threads) on the thread that computes."""

    def __init__(self, cores: int, set_threads: Callable[[int], None], directory: Path | None = None) -> None:
        if cores < 1:
            raise ValueError(f"a core share needs at least one core, not {cores}")
        self.cores = cores
        self.threads = 0  # what set_threads was last given (0: not yet)
        self._set_threads = set_threads
        self.directory = directory or default_directory()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{os.getpid()}.busy"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._busy = False
        self._counted_at = -float("inf")

    @contextlib.contextmanager
    def computing(self) -> Iterator[int]:
        """Marks this process busy for the block (calls do not nest) and sizes its threads;
        yields the thread count. `rebalance` works on this thread inside the block."""
        if self._busy:
            raise RuntimeError("CoreShare.computing does not nest: one compute call at a time")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._busy = True
        _active.share = self
        try:
            yield self.rebalance(at_most_every_s=0.0)
        finally:
            _active.share = None
            self._busy = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def rebalance(self, at_most_every_s: float = 0.0) -> int:
        """Gives this process ``max(1, cores // busy)`` threads, busy counting every process
        computing on the host now (this one included while it is in `computing`). Within
        `at_most_every_s` of the last count, keeps the threads it has without counting."""
        now = time.monotonic()
        if now - self._counted_at < at_most_every_s:
            return self.threads
        self._counted_at = now
        threads = max(1, self.cores // max(1, self.busy_count()))
        if threads != self.threads:
            self._set_threads(threads)
            self.threads = threads
        return threads

    def busy_count(self) -> int:
        """How many processes hold their busy lock now; removes the files of dead ones."""
        busy = int(self._busy)
        for path in self.directory.glob("*.busy"):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # its process closed its share while we listed
            except OSError:
                continue  # not ours to read: it cannot be counted
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                busy += 1
                continue
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not _alive(path.stem):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return busy

    def close(self) -> None:
        """Removes this process's file (a process that dies without closing leaves an
        unlocked file, which the next count removes)."""
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def rebalance(at_most_every_s: float = 0.0) -> int | None:
    """Resize the calling thread's share, if it is inside `CoreShare.computing` (else
    nothing, None): for loops that run long, between their parts."""
    share: CoreShare | None = getattr(_active, "share", None)
    return share.rebalance(at_most_every_s) if share is not None else None


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's process, alive
    return True
