"""A forged shared-memory place is refused with a typed ProtocolError, never a crash, and
never opens a file that is not a troupe segment of this user.

A bare DEALER (a peer past authentication: the worst case) sends a Keeper process asks
whose tensor descriptor points at shared memory it was never lent: paths, links, a
directory, a missing segment, places beyond a segment's end. Each gets a failure reply
naming the problem, and the Keeper goes on serving.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
import pytest_asyncio
import torch
import zmq
import zmq.asyncio

from protocols.envelope import Envelope, encode_envelope, new_id
from runtime.actor import start_actor
from runtime.settings import RuntimeSettings
from runtime.shm.segments import SHM_DIR, host_identity
from runtime.spawn import ActorProcess
from tests.unit.runtime.shm_actors import FAST_STOP, Echo, Keeper, spawn_keeper

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = os.urandom(6).hex()
SECRET = b"not for the peer's eyes"


def forged_name(number: int) -> str:
    return f"troupe.forged.{os.getpid()}.{TOKEN}.{number}"


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Files under /dev/shm with troupe names that are not segments a peer lent: a link to
    a private file, a directory, and a real 4 KiB segment."""
    private = tmp_path_factory.mktemp("private") / "secret"
    private.write_bytes(SECRET * 200)
    names = {"link": forged_name(1), "directory": forged_name(2), "segment": forged_name(3)}
    os.symlink(private, SHM_DIR / names["link"])
    os.mkdir(SHM_DIR / names["directory"])
    (SHM_DIR / names["segment"]).write_bytes(b"\0" * 4096)
    yield names
    os.unlink(SHM_DIR / names["link"])
    os.rmdir(SHM_DIR / names["directory"])
    os.unlink(SHM_DIR / names["segment"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keeper_process() -> AsyncIterator[ActorProcess]:
    process = await spawn_keeper("keeper-forged")
    yield process
    await process.stop(timeout=10)


def forged_ask(place: list[Any], dtype: str = "uint8", shape: tuple[int, ...] = (4096,)) -> list[bytes]:
    """An Echo ask whose one tensor claims to lie at `place` in shared memory."""
    envelope = Envelope(kind=Echo.KIND, message_id=new_id(), sender="forger", sent_at=time.time(),
                        payload={"value": torch.zeros(shape, dtype=getattr(torch, dtype))}, expects_reply=True,
                        deadline=time.time() + 30, shm_host=host_identity())
    header = msgpack.unpackb(encode_envelope(envelope)[0][0], raw=False)
    header["tensors"] = [[dtype, list(shape), place, "torch"]]
    return [msgpack.packb(header, use_bin_type=True)]


async def ask_raw(endpoint: str, frames: list[bytes]) -> dict[str, Any]:
    """Send `frames` from a bare DEALER; the reply's kind and payload."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        reply = await asyncio.wait_for(sock.recv_multipart(), 10)
    finally:
        sock.close(linger=0)
    header = msgpack.unpackb(reply[0], raw=False)
    return {"kind": header["kind"], **msgpack.unpackb(header["payload"], raw=False)}


FORGERIES = {
    "a path upwards": (["../../../etc/passwd", 0, 4096, 1], "is not a troupe shared-memory segment"),
    "an absolute path": (["/etc/passwd", 0, 4096, 1], "is not a troupe shared-memory segment"),
    "a name with a slash": ([f"troupe.forged.1.{TOKEN}.1/../../x", 0, 4096, 1], "is not a troupe shared-memory segment"),
    "a name that is not a string": ([7, 0, 4096, 1], "is not a troupe shared-memory segment"),
    "a misaligned offset": (["{segment}", 1, 4096, 1], "must be a non-negative multiple of 64"),
    "a negative lease": (["{segment}", 0, 4096, -1], "lease"),
    "a place of the wrong size": (["{segment}", 0, 8, 1], "needs 4096 bytes but its shared-memory place holds 8"),
    "a place of the wrong shape": (["{segment}", 0, 4096], "must be \\[segment, offset, length, lease\\]"),
    "a missing segment": ([forged_name(99), 0, 4096, 1], "cannot map shared-memory segment .*No such file"),
    "a link to a private file": (["{link}", 0, 4096, 1], "cannot map shared-memory segment .*symbolic links"),
    "a directory": (["{directory}", 0, 4096, 1], "cannot map shared-memory segment"),
    "a place beyond the segment's end": (["{segment}", 4096, 4096, 1], "lies beyond the end of segment"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_shared_memory_place_gets_a_typed_refusal(forgery, planted, keeper_process):
    place, reason = FORGERIES[forgery]
    if isinstance(place[0], str):
        place = [place[0].format(**planted), *place[1:]]

    reply = await ask_raw(keeper_process.endpoint, forged_ask(place))

    assert reply["kind"] == "troupe.failure" and reply["error_type"] == "ProtocolError", reply
    assert re.search(reason, reply["message"]), reply["message"]
    assert SECRET.decode() not in reply["message"]


async def test_the_keeper_still_serves_after_every_forgery(planted, keeper_process):
    for place, _ in FORGERIES.values():
        if isinstance(place[0], str):
            place = [place[0].format(**planted), *place[1:]]
        await ask_raw(keeper_process.endpoint, forged_ask(place))
    envelope = Envelope(kind=Echo.KIND, message_id=new_id(), sender="honest", sent_at=time.time(),
                        payload={"value": 5}, expects_reply=True, deadline=time.time() + 30)

    reply = await ask_raw(keeper_process.endpoint, encode_envelope(envelope)[0])

    assert reply == {"kind": "test_shm.echoed", "value": 5}
    assert keeper_process.returncode is None
    assert (SHM_DIR / planted["segment"]).read_bytes() == b"\0" * 4096, "nothing was written where it was forged"


async def test_an_actor_with_shared_memory_off_refuses_any_place(planted):
    keeper = Keeper("keeper-off", settings=RuntimeSettings(**FAST_STOP, shared_memory=False))
    serving = await start_actor(keeper)
    try:
        reply = await ask_raw(keeper.endpoint or "", forged_ask([planted["segment"], 0, 4096, 1]))
    finally:
        keeper.stop()
        await serving
    assert reply["error_type"] == "ProtocolError" and "which this receiver does not take" in reply["message"]
