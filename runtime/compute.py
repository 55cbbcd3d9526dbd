"""A dedicated worker thread for blocking work.

Model compute (generate, forward, backward) blocks for seconds. Running it on the
event loop would stop heartbeats, control messages and weight-sync phases. Each
actor owns one `ComputeWorker`: one thread, so compute calls run one at a time in
submission order (torch already parallelises inside an op), while the loop stays
free. torch releases the GIL inside its kernels, so the loop keeps running.

With a `runtime.cores.CoreShare` attached (`share_cores`), every call runs marked busy
on the host and with this process's share of the cores as its thread count.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from runtime.cores import CoreShare

P = ParamSpec("P")
R = TypeVar("R")


class ComputeWorker:
    """Runs blocking callables on one dedicated thread and awaits their results."""

    def __init__(self, name: str = "compute") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-compute")
        self._closed = False
        self.cores: CoreShare | None = None

    def share_cores(self, share: CoreShare) -> None:
        """Run every later call inside `share.computing()` (once per worker)."""
        if self.cores is not None:
            raise RuntimeError("this compute worker already shares the cores")
        self.cores = share

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` on the worker thread (with the caller's context vars).

        If the awaiting task is cancelled, the call still runs to completion on the
        thread (threads cannot be interrupted); its result is discarded.
        """
        return await self.submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Queue ``fn(*args, **kwargs)`` now (it runs before any call submitted later) and
        return a future of its result, to await when it is needed."""
        if self._closed:
            raise RuntimeError("the compute worker is shut down")
        context = contextvars.copy_context()
        call = functools.partial(context.run, self._call, fn, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        share = self.cores
        if share is None:
            return fn(*args, **kwargs)
        with share.computing():
            return fn(*args, **kwargs)

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; with `wait`, block until the running call finishes."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if self.cores is not None:  # a call still running without `wait` ends without its files
            self.cores.close()
