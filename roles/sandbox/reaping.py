"""The end of every sandboxed run: its uids, its wait and its kill.

Each live run gets uids of its own when started as root (`UIDS`), so RLIMIT_NPROC
counts and the final sweep reaches that run's processes only; the harness is waited
for without being reaped, so its process group id cannot be reused before the group
is killed; then SIGKILL goes to the group and to every process of the run's uid until
none is left.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import threading
import time

import psutil

KILL_DEADLINE_S = 5.0


class UidPool:
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


UIDS = UidPool()


def wait_without_reaping(pid: int, timeout: float) -> bool:
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
    deadline = time.monotonic() + timeout
    try:
        # select may wake a little before its timeout by the monotonic clock: wait out
        # the rest, so a program is given its whole time limit and never less.
        while not select.select([pidfd], [], [], max(deadline - time.monotonic(), 0.0))[0]:
            if time.monotonic() >= deadline:
                return False
        return True
    finally:
        os.close(pidfd)


def kill_everything(process: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # every process of the group had already exited
    process.wait()
    if uid is not None:
        kill_processes_of(uid)


def kill_processes_of(uid: int) -> None:
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
