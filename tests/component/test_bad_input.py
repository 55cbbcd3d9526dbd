"""Bad input of every kind gets a clear typed error, and the actor keeps serving."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from protocols.envelope import Envelope, encode_envelope, new_id
from runtime.client import Client
from runtime.errors import RemoteError
from runtime.settings import RuntimeSettings
from tests.component.actors import Echo

ECHOER = "tests.component.actors:Echoer"


@pytest.fixture
def raw_dealer():
    """A plain pyzmq DEALER, the way a buggy or hostile peer would talk."""
    sockets = []

    def connect(endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close(linger=0)


def ask_envelope(kind: str, payload: object) -> Envelope:
    return Envelope(kind=kind, message_id=new_id(), sender="raw", sent_at=time.time(), payload=payload,
                    expects_reply=True, deadline=time.time() + 30)


def raw_ask(sock: zmq.Socket, frames: list) -> dict:
    sock.send_multipart(frames)
    header = msgpack.unpackb(sock.recv_multipart()[0])
    header["payload"] = msgpack.unpackb(header["payload"])
    return header


async def assert_still_serving(endpoint: str) -> None:
    async with Client("check") as client:
        assert (await client.ask(endpoint, Echo("alive"), timeout=10)).value == "alive"


async def test_garbage_frames_are_dropped_and_the_actor_keeps_serving(spawn, raw_dealer):
    echo = await spawn(ECHOER, "echo-0")
    sock = raw_dealer(echo.endpoint)
    for frames in ([b"not msgpack \xc1"], [b"\x93\x01\x02"], [b""], [b"\x80", b"extra frame"], [b"\xdd\xff\xff\xff\xff"]):
        sock.send_multipart(frames)
    await assert_still_serving(echo.endpoint)


async def test_an_ask_with_a_readable_header_but_broken_body_gets_a_protocol_error_reply(spawn, raw_dealer):
    echo = await spawn(ECHOER, "echo-0")
    sock = raw_dealer(echo.endpoint)
    frames, _ = encode_envelope(ask_envelope("test.echo", {"value": 1}))
    header = msgpack.unpackb(frames[0])
    header["tensors"] = [["float32", [4], 1, "torch"]]  # promises a tensor frame that is not there
    reply = raw_ask(sock, [msgpack.packb(header)])
    assert reply["kind"] == "troupe.failure"
    assert reply["correlation_id"] == header["message_id"]
    assert reply["payload"]["error_type"] == "ProtocolError"
    assert "describes 1 tensors but the message has 0" in reply["payload"]["message"]
    await assert_still_serving(echo.endpoint)


async def test_wrong_field_types_and_unknown_kinds_are_refused_with_what_was_wrong(spawn, raw_dealer):
    echo = await spawn(ECHOER, "echo-0")
    sock = raw_dealer(echo.endpoint)
    frames, _ = encode_envelope(ask_envelope("test.sleep", {"seconds": "ten"}))
    reply = raw_ask(sock, frames)
    assert reply["payload"]["error_type"] == "ProtocolError"
    assert "field test.sleep.seconds: expected float, got str" in reply["payload"]["message"]

    frames, _ = encode_envelope(ask_envelope("no.such.kind", {}))
    reply = raw_ask(sock, frames)
    assert reply["payload"]["error_type"] == "ProtocolError"
    assert "unknown message kind 'no.such.kind'" in reply["payload"]["message"]

    frames, _ = encode_envelope(ask_envelope("test.work", {"index": 1, "payload": 3}))
    reply = raw_ask(sock, frames)
    assert "expected torch.Tensor, got int" in reply["payload"]["message"]
    await assert_still_serving(echo.endpoint)


async def test_a_kind_the_actor_has_no_handler_for_gets_an_unknown_kind_error(spawn):
    from tests.component.actors import GetStats

    echo = await spawn(ECHOER, "echo-0")
    async with Client("test") as client:
        with pytest.raises(RemoteError, match="has no handler for test.stats") as caught:
            await client.ask(echo.endpoint, GetStats())
    assert caught.value.error_type == "UnknownKind"
    await assert_still_serving(echo.endpoint)


async def test_a_message_over_the_size_limit_is_refused_and_the_actor_keeps_serving(spawn, raw_dealer):
    import torch

    settings = RuntimeSettings(max_message_bytes=1 << 20)
    echo = await spawn(ECHOER, "echo-0", settings=settings)
    async with Client("big", settings=RuntimeSettings(max_message_bytes=1 << 30)) as client:
        from runtime.errors import ActorDeadError, DeadlineExceeded

        # ZeroMQ drops the connection of a peer whose frame exceeds the limit.
        with pytest.raises((ActorDeadError, DeadlineExceeded)):
            await client.ask(echo.endpoint, Echo("big", torch.zeros(2 << 20, dtype=torch.uint8)), timeout=3)
    await assert_still_serving(echo.endpoint)


async def test_an_ask_whose_header_is_over_the_header_limit_is_answered_with_what_to_do(spawn, raw_dealer):
    echo = await spawn(ECHOER, "echo-0", settings=RuntimeSettings(max_header_bytes=1 << 20))
    sock = raw_dealer(echo.endpoint)
    frames, _ = encode_envelope(ask_envelope("test.echo", {"value": "x" * (2 << 20)}))  # text, not a tensor
    reply = raw_ask(sock, frames)
    assert reply["payload"]["error_type"] == "ProtocolError"
    assert "exceeds the limit of 1048576 bytes; send bulk data as tensors" in reply["payload"]["message"]
    await assert_still_serving(echo.endpoint)


async def test_tells_with_tensors_a_handler_cannot_take_are_dropped_and_the_actor_does_not_crash(spawn):
    import torch

    from roles.pipeline import Item

    stage = await spawn("roles.pipeline:Stage", "stage-0")
    async with Client("hostile") as client:
        for dtype in (torch.complex64, torch.float8_e4m3fn, torch.int64, torch.bool):
            await client.tell(stage.endpoint, Item(0, torch.zeros(2, 2).to(dtype)))
        with pytest.raises(RemoteError) as refused:
            await client.ask(stage.endpoint, Item(1, torch.zeros(4)), timeout=10)
    assert refused.value.error_type == "ProtocolError"
    assert "pipeline.item.values: expected a 2-d tensor" in str(refused.value)
    assert stage.returncode is None
