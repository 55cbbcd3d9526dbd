"""Sharing the cores between processes that compute at the same time (runtime.cores),
with real processes holding real locks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from roles.models import AUTO_THREADS_MIN_PARAMETERS, SHARE_RECOUNT_S, limit_cpu_threads, rebalance_between_layers
from runtime.compute import ComputeWorker
from runtime.cores import CoreShare, CoreShareError, default_directory, rebalance

REPO = Path(__file__).resolve().parents[2]

BUSY_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from runtime.cores import CoreShare
    share = CoreShare(4, lambda threads: None, Path(sys.argv[1]))
    with share.computing():
        print("busy", flush=True)
        sys.stdin.readline()  # computing until told to stop
    print("idle", flush=True)
    sys.stdin.readline()
    share.close()
""")


class BusyProcess:
    """Another process with a share of the same directory, computing until told."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_CHILD, str(directory)], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "busy"

    def finish_computing(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "idle"

    def close(self) -> None:
        self.process.stdin.close()  # end of input: it stops computing and exits
        self.process.wait(timeout=30)
        self.process.stdout.close()


def test_threads_follow_who_computes(tmp_path: Path) -> None:
    given: list[int] = []
    share = CoreShare(4, given.append, tmp_path)
    assert share.busy_count() == 0
    with share.computing() as threads:
        assert threads == 4 and given == [4] and share.busy_count() == 1
    other = BusyProcess(tmp_path)
    try:
        assert share.busy_count() == 1  # the other one, this one idle
        with share.computing() as threads:
            assert threads == 2 and share.busy_count() == 2
            other.finish_computing()
            assert rebalance() == 4  # grows back between two parts of one computation
        assert given == [4, 2, 4]
    finally:
        other.close()
        share.close()
    assert sorted(tmp_path.iterdir()) == []


def test_a_killed_process_frees_its_cores_and_its_files(tmp_path: Path) -> None:
    share = CoreShare(2, lambda threads: None, tmp_path)
    other = BusyProcess(tmp_path)
    other_files = sorted(tmp_path.glob(f"{other.process.pid}-*"))
    assert [path.suffix for path in other_files] == [".alive", ".busy"]
    with share.computing() as threads:
        assert threads == 1
        os.kill(other.process.pid, signal.SIGKILL)
        other.process.wait(timeout=30)
        assert rebalance() == 2
    assert not any(path.exists() for path in other_files)  # removed by the count that found its life lock gone
    share.close()
    assert list(tmp_path.iterdir()) == []


def test_an_idle_live_share_keeps_its_files(tmp_path: Path) -> None:
    """Another process's share that is not computing is not counted and not removed."""
    share = CoreShare(2, lambda threads: None, tmp_path)
    other = BusyProcess(tmp_path)
    try:
        other.finish_computing()
        with share.computing() as threads:
            assert threads == 2
        assert len(list(tmp_path.glob(f"{other.process.pid}-*"))) == 2
    finally:
        other.close()
        share.close()


def test_two_shares_of_one_process_count_each_other(tmp_path: Path) -> None:
    first, second = CoreShare(2, lambda threads: None, tmp_path), CoreShare(2, lambda threads: None, tmp_path)
    with first.computing():
        with second.computing() as threads:
            assert threads == 1 and first.busy_count() == 2
    first.close()
    second.close()


def test_files_removed_by_someone_else_are_made_again(tmp_path: Path) -> None:
    share = CoreShare(2, lambda threads: None, tmp_path)
    for path in list(tmp_path.iterdir()):
        path.unlink()  # as a cleaner of /dev/shm would
    with share.computing():
        other = CoreShare(2, lambda threads: None, tmp_path)
        assert other.busy_count() == 1  # the remade busy file is locked
        other.close()
    assert share.path.exists() and share.alive_path.exists()
    share.close()


def test_a_planted_fifo_or_link_cannot_block_or_redirect_a_count(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "1-aaaa.busy")
    (tmp_path / "2-bbbb.busy").symlink_to("/dev/zero")
    share = CoreShare(2, lambda threads: None, tmp_path)
    assert share.busy_count() == 0
    share.close()


def test_a_directory_others_can_write_or_own_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(CoreShareError, match="only it can write"):
        CoreShare(2, lambda threads: None, shared)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(CoreShareError):
        CoreShare(2, lambda threads: None, tmp_path / "link")
    fresh = CoreShare(2, lambda threads: None, tmp_path / "fresh")
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
    fresh.close()
    # a role whose directory cannot be trusted keeps its threads and does not share
    monkeypatch.setenv("TROUPE_CORES_DIR", str(shared))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    worker = ComputeWorker("test")
    before = torch.get_num_threads()
    try:
        limit_cpu_threads("cpu", "auto", torch.nn.Linear(1, AUTO_THREADS_MIN_PARAMETERS, bias=False), worker)
        assert worker.cores is None and torch.get_num_threads() == 2
    finally:
        worker.shutdown()
        torch.set_num_threads(before)


def test_rebalance_outside_a_computation_does_nothing(tmp_path: Path) -> None:
    given: list[int] = []
    share = CoreShare(2, given.append, tmp_path)
    assert rebalance() is None and given == []
    with share.computing():
        with pytest.raises(RuntimeError, match="does not nest"):
            with share.computing():
                pass
    assert rebalance() is None
    share.close()
    share.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        with share.computing():
            pass


def test_a_share_needs_a_core(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one core"):
        CoreShare(0, lambda threads: None, tmp_path)


def test_the_directory_is_per_user_and_cpu_set_and_can_be_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TROUPE_CORES_DIR", raising=False)
    assert default_directory({0, 1}).name.startswith(f"troupe-cores-{os.getuid()}-")
    assert default_directory({0, 1}) == default_directory({1, 0}) != default_directory({2, 3})
    monkeypatch.setenv("TROUPE_CORES_DIR", str(tmp_path / "cores"))
    assert default_directory() == tmp_path / "cores"


def test_compute_calls_run_with_their_share(tmp_path: Path) -> None:
    """A compute worker with a share: each call is marked busy and runs with the share's
    torch thread count on the compute thread; the count changes as another process
    starts computing."""

    async def main() -> list[int]:
        worker = ComputeWorker("test")
        try:
            await worker.run(torch.set_num_threads, 1)
            worker.share_cores(CoreShare(2, torch.set_num_threads, tmp_path))
            second = CoreShare(2, torch.set_num_threads, tmp_path)
            with pytest.raises(RuntimeError, match="already shares"):
                worker.share_cores(second)
            second.close()
            alone = await worker.run(torch.get_num_threads)
            other = BusyProcess(tmp_path)
            try:
                shared = await worker.run(torch.get_num_threads)
            finally:
                other.close()
            busy_inside = await worker.run(lambda: worker.cores.busy_count())
            return [alone, shared, busy_inside]
        finally:
            worker.shutdown()

    assert asyncio.run(main()) == [2, 1, 1]
    assert list(tmp_path.iterdir()) == []  # the worker's shutdown closed its share


def test_auto_threads_share_the_cores_of_a_large_model_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TROUPE_CORES_DIR", str(tmp_path))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    large = torch.nn.Linear(1, AUTO_THREADS_MIN_PARAMETERS, bias=False)
    small = torch.nn.Linear(4, 4)
    before = torch.get_num_threads()
    try:
        for threads, model, shared in [("auto", large, True), ("auto", small, False), (2, large, False)]:
            worker = ComputeWorker("test")
            limit_cpu_threads("cpu", threads, model, worker)
            assert (worker.cores is not None) is shared, (threads, model)
            if shared:
                assert worker.cores.cores == 4
            worker.shutdown()
        worker = ComputeWorker("test")
        limit_cpu_threads("cuda:0", "auto", large, worker)  # a GPU role's threads are torch's
        assert worker.cores is None
        worker.shutdown()
    finally:
        torch.set_num_threads(before)


class Layers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_layers_resize_the_share_in_their_forward_and_backward(tmp_path: Path) -> None:
    """Within one forward and backward: shrinks in the forward when another process
    starts computing, grows back in the backward when it stops."""
    given: list[int] = []
    share = CoreShare(4, given.append, tmp_path)
    model = Layers()
    rebalance_between_layers(model)
    with share.computing():
        other = BusyProcess(tmp_path)
        try:
            time.sleep(SHARE_RECOUNT_S)
            loss = model(torch.ones(2, 4)).sum()
            assert given == [4, 2]
            other.finish_computing()
            time.sleep(SHARE_RECOUNT_S)
            loss.backward()
            assert given == [4, 2, 4]
        finally:
            other.close()
    with torch.no_grad():
        model(torch.ones(2, 4))  # outside a computation the hooks change nothing
    assert given == [4, 2, 4]
    share.close()
