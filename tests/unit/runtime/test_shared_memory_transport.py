"""Large tensors between processes on one host travel through shared memory: they arrive
equal, a kept tensor keeps its segment, segments are pooled, and small tensors, peers on
other hosts, inproc links and actors with it turned off get socket frames.

Real processes, real ZeroMQ sockets, real /dev/shm (tests/unit/runtime/shm_actors.py).
One Keeper process serves the whole module (starting a process costs seconds); each
test uses keys of its own and a Driver of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import numpy as np
import pytest
import pytest_asyncio
import torch
import zmq
import zmq.asyncio

from protocols.envelope import Envelope, encode_envelope, new_id
from runtime.actor import start_actor
from runtime.settings import RuntimeSettings
from runtime.shm.segments import host_identity
from runtime.spawn import ActorProcess
from tests.unit.protocols.payloads import raw_bytes
from tests.unit.runtime.shm_actors import (
    FAST_STOP,
    MB,
    Checksum,
    Drop,
    Driver,
    Echo,
    Keep,
    Keeper,
    Report,
    byte_sum,
    eventually,
    filled,
    spawn_keeper,
    troupe_segments,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keeper_process() -> AsyncIterator[ActorProcess]:
    """A Keeper in a process of its own (shared memory on), for the whole module."""
    process = await spawn_keeper("keeper-0")
    yield process
    await process.stop(timeout=10)


@pytest_asyncio.fixture(loop_scope="module")
async def driver() -> AsyncIterator[Driver]:
    """A Driver actor serving in the module's event loop; each test gets a new one."""
    actor = Driver("driver-0", settings=RuntimeSettings(**FAST_STOP))
    task = await start_actor(actor)
    yield actor
    actor.stop()
    await task


async def test_tensors_of_many_dtypes_and_shapes_arrive_equal_through_shared_memory_both_ways(driver, keeper_process):
    keeper = keeper_process.endpoint
    await driver.ask(keeper, Report())  # first contact: each side learns the other shares its host
    generator = torch.Generator().manual_seed(0)
    sent = {
        "float32": torch.randn(512, 1024, generator=generator),
        "bfloat16": torch.randn(1024, 1024, generator=generator).to(torch.bfloat16),
        "int64": torch.arange(300_000) * -7,
        "bool": torch.rand(3 * MB, generator=generator) > 0.5,
        "complex64": torch.randn(300, 1000, dtype=torch.complex64, generator=generator),
        "float8": torch.randn(2 * MB, generator=generator).to(torch.float8_e4m3fn),
        "3d": torch.randn(16, 128, 256, generator=generator).to(torch.float16),
        "transposed": torch.randn(1024, 512, generator=generator).t(),  # not contiguous
        "numpy": np.random.default_rng(0).standard_normal(400_000),
        "small": torch.arange(10),  # below the threshold: travels in a frame
        "scalar": torch.tensor(3.5),
    }

    echoed = (await driver.ask(keeper, Echo(sent))).value

    assert list(echoed) == list(sent)
    for key, value in sent.items():
        if isinstance(value, np.ndarray):
            assert isinstance(echoed[key], np.ndarray) and np.array_equal(echoed[key], value), key
        else:
            assert echoed[key].dtype == value.dtype and echoed[key].shape == value.shape, key
            assert raw_bytes(echoed[key]) == raw_bytes(value), key
    shared = driver.shared_memory
    assert shared is not None and shared.lender is not None and shared.borrower is not None
    assert shared.lender.created == 1, "the request's large tensors went in one segment"
    assert len(shared.borrower.mapped) == 1, "the reply's large tensors came in one of the keeper's segments"
    # The reply's tensors are views on the keeper's segment: it stays lent while we hold them.
    (reply_segment,) = shared.borrower.mapped
    assert reply_segment in (await driver.ask(keeper, Report())).loans.values()
    del echoed
    await eventually(lambda: shared.borrower.released >= 1, what="the reply's loan to be released")
    assert reply_segment not in (await driver.ask(keeper, Report())).loans.values()
    # (The request's loan stays with the keeper: its deduplicator remembers the reply, which
    # holds the tensors it received; the next test shows a loan coming back.)


async def test_a_kept_tensor_keeps_its_segment_and_the_segment_is_reused_only_after_release(driver, keeper_process):
    keeper = keeper_process.endpoint
    await driver.ask(keeper, Report())
    shared = driver.shared_memory
    assert shared is not None and shared.lender is not None
    lender = shared.lender

    await driver.ask(keeper, Keep("reuse-a", filled(1)))
    (segment_a,) = lender.loans.values()
    await driver.ask(keeper, Keep("reuse-b", filled(2)))
    assert len(lender.loans) == 2, "a is still held, so b needed a segment of its own"
    (segment_b,) = set(lender.loans.values()) - {segment_a}

    await driver.ask(keeper, Drop("reuse-a"))
    await eventually(lambda: segment_a not in lender.loans.values(), what="a's segment to be released")
    await driver.ask(keeper, Keep("reuse-c", filled(3)))

    assert set(lender.loans.values()) == {segment_a, segment_b}, "c went in a's released segment"
    assert lender.created == 2
    assert (await driver.ask(keeper, Checksum("reuse-b"))).total == 2 * 2 * MB, "b is untouched by the reuse"
    assert (await driver.ask(keeper, Checksum("reuse-c"))).total == 3 * 2 * MB
    await driver.ask(keeper, Drop("reuse-b"))
    await driver.ask(keeper, Drop("reuse-c"))


async def test_segments_are_pooled_so_many_messages_need_only_a_few(driver, keeper_process):
    keeper = keeper_process.endpoint
    await driver.ask(keeper, Report())
    shared = driver.shared_memory
    assert shared is not None and shared.lender is not None

    for index in range(60):  # each replaces the last, which the keeper then frees
        await driver.ask(keeper, Keep("pooled", filled(index, 3 * MB)))
    await driver.ask(keeper, Drop("pooled"))
    await eventually(lambda: shared.lender.loans == {}, what="every loan to come back")

    assert 1 <= shared.lender.created <= 4
    assert shared.lender.stats.pooled == shared.lender.created
    assert len(troupe_segments(pid=shared.lender.pid)) == shared.lender.created


async def test_tensors_below_the_threshold_travel_as_frames(driver, keeper_process):
    keeper = keeper_process.endpoint
    await driver.ask(keeper, Report())
    small = torch.arange(MB // 16, dtype=torch.int64)  # half a MiB

    await driver.ask(keeper, Keep("small", small))

    assert driver.shared_memory is not None and driver.shared_memory.lender is not None
    assert driver.shared_memory.lender.created == 0
    assert (await driver.ask(keeper, Checksum("small"))).total == byte_sum(small)


async def raw_ask(endpoint: str, shm_host: str | None, value: torch.Tensor) -> dict:
    """Ask a Keeper to echo `value` from a bare DEALER claiming `shm_host`; the reply's header."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        request = Envelope(kind=Echo.KIND, message_id=new_id(), sender="raw", sent_at=time.time(),
                           payload={"value": value}, expects_reply=True, deadline=time.time() + 30, shm_host=shm_host)
        await sock.send_multipart(encode_envelope(request)[0])
        frames = await asyncio.wait_for(sock.recv_multipart(), 10)
    finally:
        sock.close(linger=0)
    return msgpack.unpackb(frames[0], raw=False)


async def test_only_a_peer_that_says_it_shares_this_host_gets_shared_memory(keeper_process):
    value = filled(7)
    elsewhere = await raw_ask(keeper_process.endpoint, "0123456789abcdef", value)
    unknown = await raw_ask(keeper_process.endpoint, None, value)
    here = await raw_ask(keeper_process.endpoint, host_identity(), value)

    assert elsewhere["tensors"][0][2] == 1 and unknown["tensors"][0][2] == 1, "frames for a peer not on this host"
    place = here["tensors"][0][2]
    assert isinstance(place, list) and place[0].startswith("troupe."), "a shared-memory place for a peer here"
    assert here["shm_host"] == host_identity()


async def test_inproc_links_and_actors_with_shared_memory_off_use_frames():
    inproc_keeper = Keeper("keeper-inproc", settings=RuntimeSettings(**FAST_STOP))
    off = RuntimeSettings(**FAST_STOP, shared_memory=False)
    tcp_keeper = Keeper("keeper-off", settings=off)
    sender = Driver("driver-inproc", settings=RuntimeSettings(**FAST_STOP))
    sender_off = Driver("driver-off", settings=off)
    tasks = [
        await start_actor(inproc_keeper, endpoint="inproc://keeper-inproc"), await start_actor(tcp_keeper),
        await start_actor(sender), await start_actor(sender_off),
    ]
    try:
        for _ in range(2):  # the second message would use shared memory if anything did
            await sender.ask("inproc://keeper-inproc", Keep("x", filled(5)))
            await sender.ask(tcp_keeper.endpoint, Keep("x", filled(5)))
            await sender_off.ask(inproc_keeper.endpoint, Keep("y", filled(6)))
        assert sender.shared_memory is not None and sender.shared_memory.lender is not None
        assert sender.shared_memory.lender.created == 0
        assert sender_off.shared_memory is not None and sender_off.shared_memory.identity is None
        assert byte_sum(tcp_keeper.kept["x"]) == 5 * 2 * MB and byte_sum(inproc_keeper.kept["y"]) == 6 * 2 * MB
    finally:
        for actor in (inproc_keeper, tcp_keeper, sender, sender_off):
            actor.stop()
        await asyncio.gather(*tasks)
