"""Trainer ranks rendezvous through the registry (roles.rendezvous), on real sockets.

The ranks are bound to this machine's own address beyond loopback, with CURVE on, as
on a cluster: rank 0's store must listen there and nowhere else, the address it
publishes must be that one, and the other ranks must find it through the registry.
"""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest

from roles.rendezvous import STORE_CAPABILITY, RendezvousError, trainer_rendezvous
from runtime.actor import Actor
from runtime.registry import Registry
from runtime.security import generate_keys, is_loopback_endpoint
from runtime.settings import RuntimeSettings


class Rank(Actor):
    """A trainer rank with nothing but its rendezvous."""

    role = "trainer"


def exposed_address() -> str:
    for items in psutil.net_if_addrs().values():
        for item in items:
            if item.family == socket.AF_INET and not is_loopback_endpoint(f"tcp://{item.address}:1"):
                return item.address
    pytest.fail("this test needs a network interface with an IPv4 address beyond loopback")


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.fixture
def exposed(tmp_path, monkeypatch):
    """(this machine's address beyond loopback, settings with the run's CURVE keys).

    The ranks run in this process and pin gloo's interface in its environment; the
    variable is undone after the test, or every process the suite starts later (Slurm
    steps on other network namespaces among them) would inherit this machine's name."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "")
    generate_keys(tmp_path / "keys")
    return exposed_address(), RuntimeSettings(curve_keys_dir=str(tmp_path / "keys"), heartbeat_interval_s=0.2)


async def test_the_ranks_find_rank_zeros_store_through_the_registry_on_the_address_it_is_bound_to(run_here, exposed):
    host, settings = exposed
    registry = (await run_here(Registry("registry", settings=settings), endpoint=f"tcp://{host}:*")).actor
    ranks = [Rank(f"trainer-{index}", instance=index, settings=settings) for index in range(3)]
    for rank in ranks:
        await run_here(rank, endpoint=f"tcp://{host}:*", registry=registry.endpoint)

    async def join(rank: Actor, delay: float) -> dict:
        await asyncio.sleep(delay)
        return await rank.compute.run(trainer_rendezvous, rank, rank.instance, 3, None, 30.0)

    # the other ranks ask before rank 0 has published: they wait for it
    first, second, third = await asyncio.gather(join(ranks[0], 0.5), join(ranks[1], 0.0), join(ranks[2], 0.0))
    published = registry.records["trainer-0"].capabilities[STORE_CAPABILITY]
    assert published == f"tcp://{host}:{first['store'].port}"
    assert listening_addresses(first["store"].port) == {host}  # not on loopback, not on every interface
    first["store"].set("rank-0", "here")
    assert second["store"].get("rank-0") == b"here" and third["store"].get("rank-0") == b"here"
    assert ranks[0].membership.record.capabilities == {STORE_CAPABILITY: published}  # kept for a registration again


async def test_a_rank_whose_rank_zero_never_publishes_fails_naming_what_it_waited_for(run_here):
    settings = RuntimeSettings(heartbeat_interval_s=0.2)
    registry = (await run_here(Registry("registry", settings=settings))).actor
    alone = (await run_here(Rank("trainer-1", instance=1, settings=settings), registry=registry.endpoint)).actor
    with pytest.raises(RendezvousError) as caught:
        await alone.compute.run(trainer_rendezvous, alone, 1, 2, None, 1.0)
    assert str(caught.value).startswith(
        f"trainer-1 waited 1 s for the address of rank 0's store (instance 0 of role 'trainer') in the registry at "
        f"{registry.endpoint}, and rank 0 has not published it (registered trainer ranks: trainer-1)"
    )


async def test_a_rank_outside_a_run_is_told_to_start_in_one_or_name_an_init_method(run_here):
    lonely = (await run_here(Rank("trainer-1", instance=1))).actor
    with pytest.raises(RendezvousError, match="set the trainer config's init_method to tcp://HOST:PORT"):
        await lonely.compute.run(trainer_rendezvous, lonely, 1, 2, None, 1.0)
