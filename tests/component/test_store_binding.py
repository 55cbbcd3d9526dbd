"""The rendezvous stores listen on the run's address only.

torch's TCPStore, left to itself, listens on every interface (IPv4 and IPv6), so any
host that can reach the machine could talk to a trainer's store. `start_store` binds
the run's address (loopback for a one-host run) before handing the socket to torch.
"""

from __future__ import annotations

import datetime

import psutil
import torch.distributed as dist

from runtime.weights.group import start_store


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port}


def test_a_store_started_for_loopback_listens_on_loopback_only():
    store = start_store("127.0.0.1", 10)
    assert listening_addresses(store.port) == {"127.0.0.1"}
    client = dist.TCPStore("127.0.0.1", store.port, is_master=False, timeout=datetime.timedelta(seconds=10))
    client.set("rank-1", "ready")
    assert store.get("rank-1") == b"ready"


def test_a_store_on_a_given_port_takes_that_port():
    first = start_store("127.0.0.1", 10)
    port = first.port
    del first  # the store closes its socket when it goes
    second = start_store("127.0.0.1", 10, port)
    assert second.port == port and listening_addresses(port) == {"127.0.0.1"}
