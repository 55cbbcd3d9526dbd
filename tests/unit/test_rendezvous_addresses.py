"""The addresses rendezvous stores listen on and hand out (roles.rendezvous for the trainer
ranks, runtime.weights for the weight channel): the address an actor is bound to, never
a loopback address of their own choosing, so a run across nodes works as one on a machine."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import psutil
import pytest

from protocols.membership import ActorRecord
from roles.rendezvous import (
    STORE_CAPABILITY,
    RendezvousError,
    parse_store_address,
    pin_gloo_interface,
    rank0_address,
    store_address,
)
from runtime.security import is_loopback_endpoint
from runtime.weights.group import bound_host, local_address_towards

REPO = Path(__file__).resolve().parents[2]
RENDEZVOUS_MODULES = ["roles/rendezvous.py", "runtime/weights/group.py", "runtime/weights/phases.py", "runtime/registry.py"]


def this_machines_exposed_addresses() -> list[str]:
    addresses = [item.address for items in psutil.net_if_addrs().values() for item in items
                 if item.family == socket.AF_INET and not is_loopback_endpoint(f"tcp://{item.address}:1")]
    assert addresses, "this test needs a network interface with an IPv4 address beyond loopback"
    return addresses


def record(name: str, instance: int, capabilities: dict | None = None, role: str = "trainer") -> ActorRecord:
    return ActorRecord(name=name, role=role, instance=instance, endpoint=f"tcp://10.0.0.{instance + 1}:5000",
                       pid=1, host=f"node{instance + 1}", capabilities=capabilities)


def test_a_store_listens_where_its_actor_is_bound_a_node_address_on_a_cluster():
    assert bound_host("tcp://10.7.0.2:41000") == "10.7.0.2"
    assert bound_host("tcp://gpu-b07:41000") == "gpu-b07"
    assert bound_host("tcp://127.0.0.1:41000") == "127.0.0.1"  # a one-machine run: where it is bound, nothing more


def test_a_wildcard_bind_gives_the_address_of_an_interface_not_a_loopback_one():
    for endpoint in ("tcp://0.0.0.0:41000", "tcp://*:41000"):
        assert not is_loopback_endpoint(f"tcp://{bound_host(endpoint)}:1")


def test_an_endpoint_without_an_address_is_refused_rather_than_given_loopback():
    for endpoint in ("ipc:///tmp/trainer-0", None, ""):
        with pytest.raises(ValueError, match="needs an actor bound to a tcp:// address"):
            bound_host(endpoint)


def test_a_member_reaches_another_nodes_store_from_its_own_address_not_from_loopback():
    for address in this_machines_exposed_addresses():  # the local table routes a machine's own address
        assert local_address_towards(address) == address
    assert is_loopback_endpoint(f"tcp://{local_address_towards('127.0.0.1')}:1")


def test_store_addresses_round_trip_and_a_bad_one_is_named():
    assert store_address("10.7.0.2", 29500) == "tcp://10.7.0.2:29500"
    assert parse_store_address(store_address("10.7.0.2", 29500), what="x") == ("10.7.0.2", 29500)
    assert parse_store_address(store_address("fe80::1", 29500), what="x") == ("fe80::1", 29500)
    for bad in ("tcp://10.7.0.2", "file:///tmp/store", "tcp://:29500", "tcp://h:port"):
        with pytest.raises(RendezvousError, match=r"trainer config init_method .* needs tcp://HOST:PORT"):
            parse_store_address(bad, what="trainer config init_method")


def test_the_ranks_take_rank_zeros_address_from_its_record_once_it_is_there():
    assert rank0_address([record("trainer-1", 1), record("trainer-0", 0)], "trainer") is None
    published = record("trainer-0", 0, {STORE_CAPABILITY: "tcp://10.0.0.1:29500"})
    assert rank0_address([record("trainer-1", 1), published], "trainer") == "tcp://10.0.0.1:29500"
    assert rank0_address([record("critic-0", 0, {STORE_CAPABILITY: "tcp://10.0.0.9:1"}, role="critic")], "trainer") is None


def test_gloo_is_pinned_to_the_interface_of_the_bound_address(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "")  # unset for the test, and whatever it becomes is undone after
    assert pin_gloo_interface("127.0.0.1") is None  # one machine: gloo's own choice is fine
    address = this_machines_exposed_addresses()[0]
    interface = pin_gloo_interface(address)
    assert interface is not None and any(item.address == address for item in psutil.net_if_addrs()[interface])
    assert os.environ["GLOO_SOCKET_IFNAME"] == interface
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", interface)
    assert pin_gloo_interface(address) is None and os.environ["GLOO_SOCKET_IFNAME"] == interface  # the user's choice stands


def test_an_inherited_interface_this_machine_lacks_is_refused_naming_the_ones_it_has(monkeypatch):
    # srun hands every step the submitting shell's environment, another machine's interface names included
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ib-elsewhere0")
    with pytest.raises(RendezvousError, match="names no interface of .*ib-elsewhere0.*it has .*lo"):
        pin_gloo_interface(this_machines_exposed_addresses()[0])


def test_no_rendezvous_module_names_a_loopback_address():
    for module in RENDEZVOUS_MODULES:
        text = (REPO / module).read_text()
        assert not re.search(r"127\.0\.0\.1|localhost|::1\b", text), f"{module} names a loopback address"
