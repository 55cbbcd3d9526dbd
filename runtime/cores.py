"""Sharing a host's cores between the processes that compute on it at the same time.

On a small machine the generator and the trainer of an asynchronous run compute at
once. Each sized for every core, their threads outnumber the cores and spin against
each other's work: SmolLM2's async steps took 30-77 s against 12-14 s in sync mode
(docs/benchmarks.md). Each sized for its own half, a role that computes alone leaves
half the machine idle.

A `CoreShare` sizes a process's thread pool by who is computing now. Every share has
two files of its own, named by a unique id, in a directory private to the user and the
set of CPUs the process may run on: ``ID.alive``, locked for the share's whole life,
and ``ID.busy``, locked while it computes (`computing`). `rebalance` counts the busy
files locked and gives this process ``max(1, cores // busy)`` threads. The kernel
releases a dead process's locks, so a crash never leaves a core counted as busy; the
next count finds its ``alive`` file unlocked and removes both files. Long computations
call `rebalance` between their parts (decoding steps, layers) to grow back when the
other process finishes, or shrink when one starts.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_active = threading.local()

_OPEN_PEER = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO or a link planted there cannot block or redirect a count


class CoreShareError(OSError):
    """The share's directory cannot be trusted or used (the role keeps a fixed thread count)."""


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def default_directory(cpus: set[int] | None = None) -> Path:
    """Where the shares live: ``$TROUPE_CORES_DIR``, else one directory per user and CPU
    set under /dev/shm (host-local and in memory), else the temporary directory.
    Processes pinned to different CPUs (taskset, two Slurm jobs on one node) do not
    take cores from each other, so they count apart."""
    if configured := os.environ.get("TROUPE_CORES_DIR"):
        return Path(configured)
    if cpus is None:
        cpus = usable_cpus()
    mask = hashlib.sha1(",".join(map(str, sorted(cpus))).encode()).hexdigest()[:12]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"troupe-cores-{os.getuid()}-{mask}"


def private_directory(directory: Path) -> Path:
    """Create `directory` (mode 0700) or check an existing one: a real directory, owned by
    this user, that nobody else can write to. Raises CoreShareError otherwise."""
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise CoreShareError(f"{directory} is not a directory of this user's that only it can write to: "
                             f"no core share (set TROUPE_CORES_DIR to a private directory)")
    return directory


class CoreShare:
    """This process's share of `cores`, applied through `set_threads` (for example
    torch.set_num_threads) on the thread that computes."""

    def __init__(self, cores: int, set_threads: Callable[[int], None], directory: Path | None = None) -> None:
        if cores < 1:
            raise ValueError(f"a core share needs at least one core, not {cores}")
        self.cores = cores
        self.threads = 0  # what set_threads was last given (0: not yet)
        self._set_threads = set_threads
        self.directory = private_directory(directory or default_directory())
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._alive_fd = self._busy_fd = -1
        self._open_files()
        self._busy = False
        self._counted_at = -float("inf")
        atexit.register(self.close)  # actors shut their compute worker down without waiting

    @property
    def path(self) -> Path:
        """The busy file (locked while this process computes)."""
        return self.directory / f"{self.id}.busy"

    @property
    def alive_path(self) -> Path:
        return self.directory / f"{self.id}.alive"

    def _open_files(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        self._alive_fd = os.open(self.alive_path, flags, 0o600)
        fcntl.flock(self._alive_fd, fcntl.LOCK_EX)  # held for the share's life (a count's probe lasts microseconds)
        self._busy_fd = os.open(self.path, flags, 0o600)

    def _reopen_if_removed(self) -> None:
        """Recreate the files if something removed them (a cleaner of /dev/shm): a lock on
        an unlinked file is one nobody counts."""
        try:
            same = all(os.stat(path).st_ino == os.fstat(fd).st_ino
                       for path, fd in ((self.alive_path, self._alive_fd), (self.path, self._busy_fd)))
        except FileNotFoundError:
            same = False
        if not same:
            self._close_files()
            for path in (self.alive_path, self.path):
                path.unlink(missing_ok=True)
            self._open_files()

    @contextlib.contextmanager
    def computing(self) -> Iterator[int]:
        """Marks this process busy for the block (calls do not nest) and sizes its threads;
        yields the thread count. `rebalance` works on this thread inside the block."""
        if self._busy:
            raise RuntimeError("CoreShare.computing does not nest: one compute call at a time")
        if self._busy_fd < 0:
            raise RuntimeError("this core share is closed")
        self._reopen_if_removed()
        fcntl.flock(self._busy_fd, fcntl.LOCK_EX)  # waits only for another process's count (microseconds)
        self._busy = True
        _active.share = self
        try:
            yield self.rebalance(at_most_every_s=0.0)
        finally:
            _active.share = None
            self._busy = False
            if self._busy_fd >= 0:  # closed meanwhile (at exit): the lock went with the descriptor
                fcntl.flock(self._busy_fd, fcntl.LOCK_UN)

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
        """How many shares are computing now; removes the files of dead ones."""
        busy = int(self._busy)
        for path in self.directory.glob("*.busy"):
            if path == self.path:
                continue
            locked = _locked(path, fcntl.LOCK_SH)
            if locked:
                busy += 1
            elif locked is False and _locked(path.with_suffix(".alive"), fcntl.LOCK_EX) is False:
                for dead in (path.with_suffix(".alive"), path):  # its process is gone: nothing holds its life lock
                    dead.unlink(missing_ok=True)
        return busy

    def _close_files(self) -> None:
        for fd in (self._busy_fd, self._alive_fd):
            if fd >= 0:
                os.close(fd)
        self._alive_fd = self._busy_fd = -1

    def close(self) -> None:
        """Removes this share's files (a process that dies without closing leaves them
        unlocked, and the next count removes them). Twice is harmless."""
        if self._alive_fd < 0:
            return
        atexit.unregister(self.close)
        for path in (self.path, self.alive_path):
            path.unlink(missing_ok=True)
        self._close_files()


def rebalance(at_most_every_s: float = 0.0) -> int | None:
    """Resize the calling thread's share, if it is inside `CoreShare.computing` (else
    nothing, None): for loops that run long, between their parts."""
    share: CoreShare | None = getattr(_active, "share", None)
    return share.rebalance(at_most_every_s) if share is not None else None


def _locked(path: Path, probe: int) -> bool | None:
    """Whether another holder's lock on `path` conflicts with a `probe` lock (LOCK_SH: is
    it locked exclusively; LOCK_EX: is it locked at all); None for a file that is gone or
    not a plain file of ours to read."""
    try:
        fd = os.open(path, _OPEN_PEER)
    except OSError:
        return None  # gone while we listed, a link, or not ours
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, probe | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
