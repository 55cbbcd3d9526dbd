"""The broadcast group: trainer rank 0 (rank 0 here too) and every generator.

Groups are built directly from a c10d store with `ProcessGroupGloo` /
`ProcessGroupNCCL`, never through ``init_process_group``: the trainers' own FSDP
group stays the default group, and a broken broadcast group is simply dropped and a
new one formed under a fresh store prefix. Every operation has a timeout, and every
blocking call runs on a thread of its own (`in_thread`), so the caller's event loop
enforces the phase deadlines even while a call is stuck.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from protocols.weights import GroupSpec

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, name: str = "weights") -> T:
    """Run a blocking call on a new daemon thread and await it.

    Unlike an executor, a call that never returns holds only its own thread: the
    caller stops waiting at its deadline (cancel the await) and later calls still run.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def timeout(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


DEFAULT_ROUTE_PROBE = "192.0.2.1"
"""An address no packet goes to (TEST-NET-1): the interface that would reach it is the
interface of the default route."""
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::"})


def bound_host(endpoint: str | None) -> str:
    """The address peers reach an actor bound to `endpoint` at: the endpoint's own host
    (on a cluster, the node's address the actor registered), or for a wildcard bind
    (``tcp://0.0.0.0:*``) the address of the default route's interface.

    Rendezvous stores listen there, so they are exactly as reachable as the actor.

    Raises:
        ValueError: the endpoint is not a tcp:// endpoint (an ``ipc://`` socket has no
            address another process can connect a store to).
    """
    parts = urlsplit(endpoint or "")
    host = (parts.hostname or "") if parts.scheme == "tcp" else ""
    if not host:
        raise ValueError(f"a rendezvous store needs an actor bound to a tcp:// address, not {endpoint!r}")
    if host in WILDCARD_HOSTS:
        return local_address_towards(DEFAULT_ROUTE_PROBE)
    return host


def local_address_towards(host: str) -> str:
    """The address of this machine's interface that reaches `host` (no packet is sent):
    a loopback address for a loopback `host`, the node's own address for another node's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return probe.getsockname()[0]


def start_store(host: str, seconds: float, port: int = 0) -> dist.TCPStore:
    """A rendezvous store served on `host` only (a free port unless `port` is given).

    torch's TCPStore listens on every interface (IPv4 and IPv6) when it opens its own
    socket; handed a socket already bound to the run's address it listens there alone,
    so a one-host run's store is reachable from loopback only. The store takes over the
    socket and closes it when it goes.
    """
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(socket.SOMAXCONN)
        bound_port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    descriptor = listener.detach()
    try:
        return dist.TCPStore(host, bound_port, is_master=True, wait_for_workers=False, timeout=timeout(seconds),
                             master_listen_fd=descriptor)
    except BaseException:
        os.close(descriptor)
        raise


def connect_store(host: str, port: int, seconds: float) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=False, timeout=timeout(seconds))


def resolve_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


class BroadcastGroup:
    """One formed broadcast group. `create` blocks until every member has joined (or
    the group's timeout passes); run it with `in_thread`."""

    def __init__(self, spec: GroupSpec, backend: Any, device: torch.device) -> None:
        self.spec = spec
        self.backend = backend
        self.device = device

    @classmethod
    def create(cls, spec: GroupSpec, store: dist.Store, local_host: str, device: torch.device) -> BroadcastGroup:
        prefixed = dist.PrefixStore(f"troupe-weights/{spec.group_id}", store)
        if spec.backend == "gloo":
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout(spec.timeout_s)
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_host)]
            backend: Any = dist.ProcessGroupGloo(prefixed, spec.rank, spec.world_size, options)
        elif spec.backend == "nccl":
            if not dist.is_nccl_available() or device.type != "cuda":
                raise RuntimeError("the nccl backend needs CUDA tensors and a torch built with NCCL")
            torch.cuda.set_device(device)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout(spec.timeout_s)
            backend = dist.ProcessGroupNCCL(prefixed, spec.rank, spec.world_size, options)
            # NCCL connects lazily: one tiny broadcast forms the communicator now, so
            # "ready" means ready and the first bucket does not pay for it.
            group = cls(spec, backend, device)
            group.broadcast(torch.zeros(1, dtype=torch.uint8, device=device), spec.timeout_s)
            return group
        else:
            raise ValueError(f"unknown backend {spec.backend!r} (gloo or nccl)")
        return cls(spec, backend, device)

    def broadcast(self, flat: torch.Tensor, seconds: float) -> None:
        """Broadcast `flat` (any dtype, contiguous) from rank 0; blocks at most `seconds`."""
        backend = self.backend  # held until the operation ends (see abort)
        if backend is None:
            raise RuntimeError(f"broadcast group {self.spec.group_id} was aborted")
        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.rootTensor = 0
        work = backend.broadcast([flat.view(torch.uint8)], options)
        if self.spec.backend == "gloo":
            work.wait()  # the group's own timeout bounds it
            return
        deadline = time.monotonic() + seconds
        while not work.is_completed():  # NCCL: poll, and abort the communicator at the deadline
            if time.monotonic() > deadline:
                self.abort()
                raise TimeoutError(f"broadcast did not complete within {seconds:g} s")
            time.sleep(0.0005)
        work.wait()

    def abort(self) -> None:
        """Let the group go, so peers blocked in it fail instead of waiting (NCCL: abort
        the communicator now).

        Destroying a gloo group joins its worker threads while holding the GIL, which
        would freeze the whole process while one of them is blocked in a transfer. So
        `broadcast` holds its own reference for as long as it runs, and the group is
        destroyed by whichever thread lets go last: the event loop only ever destroys
        an idle group.
        """
        backend, self.backend = self.backend, None
        if backend is not None and self.spec.backend == "nccl":
            backend.abort()
