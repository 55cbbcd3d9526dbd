"""CURVE: beyond loopback only authenticated peers get through."""

from __future__ import annotations

import socket

import pytest
import zmq

from protocols.control import Ping
from protocols.envelope import Envelope, encode_envelope, new_id
from runtime import transport
from runtime.client import Client
from runtime.errors import AuthenticationError
from runtime.security import generate_keys, is_loopback_endpoint
from runtime.settings import RuntimeSettings
from tests.component.actors import Echo


ASK_S = 30
"""Deadline of the asks here: they check what the answer is (or that a refusal is one), and a
loaded 2-core machine has held a handshake for over 5 s."""


def test_loopback_endpoints_are_told_apart_from_exposed_ones():
    assert is_loopback_endpoint("tcp://127.0.0.1:5555")
    assert is_loopback_endpoint("tcp://localhost:*")
    assert is_loopback_endpoint("tcp://[::1]:5555")
    assert is_loopback_endpoint("ipc:///tmp/x.ipc")
    assert not is_loopback_endpoint("tcp://0.0.0.0:5555")
    assert not is_loopback_endpoint("tcp://10.0.0.7:*")
    assert not is_loopback_endpoint("tcp://eth0:5555")


def test_binding_beyond_loopback_without_keys_is_refused():
    with pytest.raises(PermissionError, match="without encrypted authentication"):
        transport.bind_router("tcp://0.0.0.0:*", 1 << 20)


def raw_ping(endpoint: str, configure=None) -> bool:
    """Whether a hand-made DEALER gets an answer to a ping within a second."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if configure is not None:
        configure(sock)
    sock.connect(endpoint)
    try:
        frames, _ = encode_envelope(Envelope(kind=Ping.KIND, message_id=new_id(), sender="raw", sent_at=0.0,
                                             payload={}, expects_reply=True))
        sock.send_multipart(frames)
        return sock.poll(1000) != 0
    finally:
        sock.close(linger=0)


async def test_with_curve_only_the_runs_own_clients_are_served(spawn, tmp_path):
    keys = generate_keys(tmp_path / "keys")
    settings = RuntimeSettings(curve_keys_dir=str(tmp_path / "keys"))
    host_ip = socket.gethostbyname(socket.gethostname())
    bind = f"tcp://{host_ip if not host_ip.startswith('127.') else '0.0.0.0'}:*"
    echo = await spawn("tests.component.actors:Echoer", "echo-0", bind=bind, settings=settings)
    endpoint = echo.endpoint.replace("0.0.0.0", "127.0.0.1")

    async with Client("member", settings=settings) as client:
        assert (await client.ask(endpoint, Echo("with keys"), timeout=ASK_S)).value == "with keys"

    assert not raw_ping(endpoint), "a peer without CURVE must not be answered"

    stranger = zmq.curve_keypair()

    def with_own_keys(sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey = stranger
        sock.curve_serverkey = keys.server_public

    assert not raw_ping(endpoint, with_own_keys), "a peer whose key is not authorized must not be answered"

    async with Client("outsider", settings=RuntimeSettings()) as client:
        with pytest.raises(AuthenticationError, match="refused the connection"):
            await client.ask(endpoint, Echo("no keys"), timeout=ASK_S)
    async with Client("member", settings=settings) as client:
        assert (await client.ask(endpoint, Echo("still serving"), timeout=ASK_S)).value == "still serving"
