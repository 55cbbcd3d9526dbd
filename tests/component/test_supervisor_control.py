"""The supervisor keeps supervising whatever it is sent.

It once redefined the actor base's `_fail`, so the first message it could not
handle (an unknown kind, or a status query whose deadline passed in its mailbox)
raised TypeError inside it and ended supervision for the rest of the run.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from launch.supervisor import Supervisor
from launch.topology import load_topology
from protocols.envelope import Envelope, decode_envelope, encode_envelope, new_id
from protocols.membership import Lookup
from protocols.supervision import RunStatus, StatusQuery
from runtime.client import Client
from runtime.errors import RemoteError
from runtime.registry import Registry


@pytest.fixture
async def supervisor(run_here, tmp_path):
    topology, configs = load_topology("examples/pipeline.yaml")
    registry = Registry("registry", run_dir=tmp_path)
    await run_here(registry)
    supervisor = Supervisor("supervisor", topology=topology, configs=configs, registry_endpoint=registry.endpoint,
                            notify=lambda line: None, run_dir=tmp_path)
    await run_here(supervisor, registry=registry.endpoint)
    return supervisor


async def test_a_kind_the_supervisor_does_not_handle_is_refused_and_it_keeps_serving(supervisor):
    async with Client("probe") as client:
        with pytest.raises(RemoteError) as refused:
            await client.ask(supervisor.endpoint, Lookup(), timeout=5)
        assert refused.value.error_type == "UnknownKind"
        status = await client.ask(supervisor.endpoint, StatusQuery(), timeout=5)
    assert isinstance(status, RunStatus) and status.run == "pipeline"
    assert not supervisor.finished.done()


async def test_a_status_query_whose_deadline_passed_in_the_mailbox_gets_deadline_exceeded(supervisor):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(supervisor.endpoint)
    try:
        late = Envelope(kind=StatusQuery.KIND, message_id=new_id(), sender="late", sent_at=time.time(),
                        payload={}, expects_reply=True, deadline=time.time() - 1)
        sock.send_multipart(encode_envelope(late)[0])
        for _ in range(500):  # the supervisor runs in this event loop: poll without blocking it
            if sock.poll(0):
                break
            await asyncio.sleep(0.01)
        reply = decode_envelope(sock.recv_multipart(zmq.NOBLOCK))
    finally:
        sock.close(linger=0)
    assert reply.kind == "troupe.failure" and reply.payload["error_type"] == "DeadlineExceeded"
    async with Client("probe") as client:
        assert (await client.ask(supervisor.endpoint, StatusQuery(), timeout=5)).run == "pipeline"
