"""Segments under /dev/shm: create one, map another process's, remove a dead owner's.

A segment is a file directly under /dev/shm, named as protocols.shared_memory says
(``troupe.<run>.<pid>.<token>.<number>``), mode 0600, its whole size reserved when it
is created (``posix_fallocate``: on a full tmpfs creation fails with ENOSPC and the
message goes by socket, where writing into a merely truncated file would kill the
process with SIGBUS).

Opening a segment named by a peer is the one place a message names a file, so
`map_segment` trusts nothing: the name must be a troupe segment's (checked when the
descriptor was parsed), the file is opened without following links, and it must be
a regular file of this user, non-empty. The caller checks each place against the
size of the mapping. A peer of the same user on the same host could still truncate
a segment it owns while this process reads it; such a peer can already read this
process's memory, so it is outside what this guards against.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from protocols.shared_memory import run_label, segment_owner

SHM_DIR = Path("/dev/shm")


@functools.cache
def host_identity() -> str | None:
    """Who can map whose segments: equal for two processes of one user on one host that
    see the same /dev/shm. None where there is no usable /dev/shm (not Linux, missing,
    not writable): shared memory is then off."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        shm = os.stat(SHM_DIR)
    except OSError:
        return None
    if not stat.S_ISDIR(shm.st_mode) or not os.access(SHM_DIR, os.W_OK | os.X_OK):
        return None
    return hashlib.sha256(f"{boot}:{shm.st_dev}:{shm.st_ino}:{os.getuid()}".encode()).hexdigest()[:16]


class Segment:
    """A segment this process created and owns: its name, size and a writable mapping.

    Raises:
        OSError: the segment could not be created (ENOSPC when /dev/shm is full,
            EEXIST if the name is taken).
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        path = SHM_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            self.mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self.view = memoryview(self.mapping)
        """A writable byte view of the whole segment (what the lender copies into)."""

    def unlink(self) -> None:
        """Remove the name: nobody can map it any more, and the memory is freed once
        every process that mapped it has let go."""
        try:
            os.unlink(SHM_DIR / self.name)
        except FileNotFoundError:
            pass  # removed already (by a supervisor that thought the owner dead)


def map_segment(name: str) -> mmap.mmap:
    """Map a segment another process lent (read and write, shared), by the rules above.

    Raises:
        OSError: it does not exist or cannot be opened or mapped.
        ValueError: it is not a regular, non-empty file of this user.
    """
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        if info.st_uid != os.getuid():
            raise ValueError(f"it belongs to user {info.st_uid}, not to this process's user {os.getuid()}")
        if info.st_size == 0:
            raise ValueError("it is empty")
        return mmap.mmap(fd, info.st_size, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)


def segment_exists(name: str) -> bool:
    return (SHM_DIR / name).exists()


def remove_segments_of(pid: int, run: str | None = None) -> list[str]:
    """Remove the segments owned by process `pid` (of run `run`, when given): after that
    process has died, nobody else will. Returns the names removed."""
    label = run_label(run) if run is not None else None
    return _remove(lambda owner_run, owner_pid: owner_pid == pid and (label is None or owner_run == label))


def remove_orphaned_segments(run: str) -> list[str]:
    """Remove the segments of run `run` whose owner process is no longer alive (left by
    processes killed with their supervisor). Returns the names removed."""
    label = run_label(run)
    return _remove(lambda owner_run, owner_pid: owner_run == label and not _alive(owner_pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and its segments are not ours anyway
    return True


def _remove(owned_by: Callable[[str, int], bool]) -> list[str]:
    """Unlink this user's troupe segments whose (run label, owner pid) `owned_by` accepts."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        owner = segment_owner(entry.name)
        if owner is None or not owned_by(*owner):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            os.unlink(entry.path)
        except OSError:  # gone meanwhile, or not ours to remove: nothing more to do here
            continue
        removed.append(entry.name)
    return removed
