"""How the trainer ranks find each other: through the registry, on the address rank 0 is bound to.

The ranks of a trainer form one torch.distributed group, and a group starts from a
store every rank reaches. Rank 0 opens a TCP store on the address its own endpoint is
bound to (`runtime.weights.group.bound_host`): on one machine the run's loopback
address, on a cluster its node's address, the one the registry already hands out for
its endpoint. It publishes ``tcp://HOST:PORT`` in its registry record (the record's
``capabilities``, under `STORE_CAPABILITY`, by registering again); every other rank
looks rank 0 up in the registry, waits until the address is there, and connects.

Why it is built this way: the address is one rank 0 listens on and the others already
reach (its actor's), so nothing names a loopback address, a fixed port or a shared
file; the store is opened on a port the kernel picks; and a new launch has a new
registry, so a rank never meets a store of an earlier launch. An explicit
``init_method`` in the trainer config still wins.

`trainer_rendezvous` runs where the trainer builds its group: on its compute thread,
away from the actor's event loop. The registry is asked through a `Client` of its own
on a private event loop, for the moment the rendezvous lasts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import psutil
import torch.distributed as dist

from protocols.membership import ActorRecord, Lookup, Register
from runtime.actor import Actor
from runtime.client import Client
from runtime.errors import ActorError
from runtime.security import is_loopback_endpoint
from runtime.weights.group import bound_host, start_store

STORE_CAPABILITY = "trainer_store"
"""The key of rank 0's registry record capabilities that holds its store's ``tcp://HOST:PORT``."""
RENDEZVOUS_TIMEOUT_S = 600.0
"""How long a rank waits for rank 0's address, and the store's own timeout (the group's too)."""
LOOKUP_INTERVAL_S = 0.2
"""How often a waiting rank asks the registry again."""


class RendezvousError(ActorError):
    """The ranks could not find each other; the text says which rank waited for what."""


def trainer_rendezvous(actor: Actor, rank: int, ranks: int, init_method: str | None,
                       timeout_s: float = RENDEZVOUS_TIMEOUT_S) -> dict[str, Any]:
    """How `actor` (rank `rank` of `ranks`) joins its group: the ``store=`` or
    ``init_method=`` argument of ``torch.distributed.init_process_group``.

    * one rank: an in-process store (no port opened);
    * ``init_method: tcp://HOST:PORT``: a store rank 0 serves on that address only
      (torch's own would listen on every interface), the others connect to it;
    * another ``init_method`` (``file://``, ``env://``): handed to torch as it is;
    * none: rank 0's store on its bound address, found through the registry.

    Call it off the event loop (it blocks, up to `timeout_s` for rank 0's address).

    Raises:
        RendezvousError: a bad ``init_method``, an actor outside a run, or no address
            from rank 0 within `timeout_s`.
    """
    if init_method is None and ranks == 1:
        return {"store": dist.HashStore()}
    if init_method is not None and init_method.startswith("tcp://"):
        host, port = parse_store_address(init_method, what="trainer config init_method")
        if rank == 0:
            return {"store": start_store(host, timeout_s, port)}
        return {"store": dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))}
    if init_method is not None:
        return {"init_method": init_method}
    if actor.membership is None:
        raise RendezvousError(
            f"{actor.name}: {ranks} trainer ranks find each other through the run's registry, and this one has none: "
            "start them in a run (troupe launch), or set the trainer config's init_method to tcp://HOST:PORT"
        )
    try:
        host = bound_host(actor.endpoint)
    except ValueError as error:  # an ipc:// trainer: say which setting gets it a store
        raise RendezvousError(f"{actor.name}: {error}; or set the trainer config's init_method") from None
    pin_gloo_interface(host)
    if rank == 0:
        store = start_store(host, timeout_s)
        asyncio.run(_publish(actor, store_address(host, store.port)))
        return {"store": store}
    host, port = parse_store_address(asyncio.run(_find_rank0_address(actor, timeout_s)), what="rank 0's store address")
    return {"store": dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))}


def store_address(host: str, port: int) -> str:
    """``tcp://HOST:PORT`` (an IPv6 host in brackets)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def parse_store_address(address: str, what: str) -> tuple[str, int]:
    """(host, port) of a ``tcp://HOST:PORT`` address; RendezvousError naming `what` otherwise."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: the same error as a missing port
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None:
        raise RendezvousError(f"{what} {address!r} needs tcp://HOST:PORT")
    return parts.hostname, port


def rank0_address(records: list[ActorRecord], role: str) -> str | None:
    """The store address rank 0 of `role` published in its record, if it has yet."""
    for record in records:
        if record.role == role and record.instance == 0 and record.capabilities:
            address = record.capabilities.get(STORE_CAPABILITY)
            if isinstance(address, str):
                return address
    return None


def pin_gloo_interface(host: str) -> str | None:
    """Make gloo listen on the interface that has `host` (the rank's bound address), unless
    ``GLOO_SOCKET_IFNAME`` already says where; returns the interface it chose, if any.
    A ``GLOO_SOCKET_IFNAME`` that names an interface this machine lacks is refused with
    `RendezvousError`, naming the ones it has.

    Left to itself, gloo listens on whatever address the machine's host name resolves to
    and hands that to the other ranks: on many machines a loopback address (Debian's
    /etc/hosts says ``127.0.1.1 HOSTNAME``), which no other node can reach. A loopback
    `host` (a one-machine run) changes nothing.
    """
    chosen = os.environ.get("GLOO_SOCKET_IFNAME")
    if chosen:
        missing = [name for name in chosen.split(",") if name not in psutil.net_if_addrs()]
        if missing:  # gloo would fail later with "Unable to find address for: eth0" and no hint
            raise RendezvousError(
                f"GLOO_SOCKET_IFNAME={chosen} names no interface of {socket.gethostname()} ({', '.join(missing)}; "
                f"it has {', '.join(sorted(psutil.net_if_addrs()))}); srun passes the submitting shell's environment "
                "to every node: unset it there to let each rank use the interface of its bound address")
        return None
    if is_loopback_endpoint(f"tcp://{host}:1"):
        return None
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror:
        return None  # not an IPv4 name: gloo's own choice stands
    for interface, addresses in psutil.net_if_addrs().items():
        if any(item.family == socket.AF_INET and item.address == address for item in addresses):
            os.environ["GLOO_SOCKET_IFNAME"] = interface
            return interface
    return None


def _client(actor: Actor) -> Client:
    assert actor.membership is not None
    settings = actor.settings.model_copy(update={"shared_memory": False, "log_messages": False})
    return Client(f"{actor.name}.rendezvous", registry=actor.membership.registry.endpoint, settings=settings,
                  run=actor.run_name)


async def _publish(actor: Actor, address: str) -> None:
    """Register rank 0 again with `address` in its record's capabilities.

    The actor's own membership keeps the new record, so a registration it makes later
    (the registry forgot it) carries the address too."""
    membership = actor.membership
    assert membership is not None
    capabilities = {**(membership.record.capabilities or {}), STORE_CAPABILITY: address}
    membership.record = dataclasses.replace(membership.record, capabilities=capabilities)
    record = dataclasses.replace(membership.record, state=membership.state, registered_at=time.time())
    async with _client(actor) as client:
        await client.ask(membership.registry, Register(record), timeout=actor.settings.ask_timeout_s)


async def _find_rank0_address(actor: Actor, timeout_s: float) -> str:
    """Ask the registry for rank 0's address until it is there, or RendezvousError at `timeout_s`."""
    assert actor.membership is not None
    registry = actor.membership.registry
    deadline = time.monotonic() + timeout_s
    trouble = "rank 0 has not published it"
    async with _client(actor) as client:
        while True:
            try:
                found = await client.ask(registry, Lookup(role=actor.role), timeout=actor.settings.ask_timeout_s)
            except ActorError as error:  # the registry is busy or restarting: ask again until the deadline
                trouble = f"the registry did not answer ({error})"
            else:
                address = rank0_address(found.records, actor.role)
                if address is not None:
                    return address
                ranks = sorted(record.name for record in found.records if record.role == actor.role)
                trouble = f"rank 0 has not published it (registered {actor.role} ranks: {', '.join(ranks) or 'none'})"
            if time.monotonic() >= deadline:
                raise RendezvousError(
                    f"{actor.name} waited {timeout_s:g} s for the address of rank 0's store (instance 0 of role "
                    f"{actor.role!r}) in the registry at {registry.endpoint}, and {trouble}: is rank 0 running "
                    "(troupe ps RUN_DIR), and did it fail (RUN_DIR/logs/<its name>.stderr)?"
                )
            await asyncio.sleep(LOOKUP_INTERVAL_S)
