"""The lender's rules in one process, on real /dev/shm: where buffers go, size classes,
the per-peer limit, reuse after release only, reclaim and close remove; and the wire
form of a place (protocols.shared_memory), refused before anything is opened."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from protocols.envelope import Envelope, decode_envelope, encode_envelope
from protocols.errors import ProtocolError
from protocols.shared_memory import PLACE_ALIGNMENT, SharedRelease, parse_place, segment_name, segment_owner
from runtime.shm.borrower import Borrower
from runtime.shm.lender import Lender
from tests.unit.runtime.shm_actors import MB, troupe_segments

KB = 1 << 10


@pytest.fixture
def lender():
    lender = Lender("lender-test", threshold=64 * KB, max_lent_per_peer=8 * MB, max_pooled=4 * MB)
    yield lender
    lender.close()
    assert troupe_segments(pid=os.getpid()) == []


def buffers(*sizes: int) -> list[memoryview]:
    return [memoryview(torch.full((size,), index + 1, dtype=torch.uint8).numpy()) for index, size in enumerate(sizes)]


def test_only_buffers_over_the_threshold_go_to_one_segment_at_aligned_offsets(lender):
    places, lease = lender.lend("peer", "peer", buffers(100 * KB, 10, 70 * KB))
    big, small, other = places

    assert small is None
    assert big.segment == other.segment and (big.offset, other.offset) == (0, 100 * KB)
    assert other.offset % PLACE_ALIGNMENT == 0 and (big.length, other.length) == (100 * KB, 70 * KB)
    assert lender.stats.lent_bytes == 256 * KB, "170 KiB rounds up to the 256 KiB size class"
    assert lender.loans == {lease: big.segment}
    assert lender.lend("peer", "peer", buffers(10, 20)) is None


def test_a_segment_is_reused_only_after_its_peer_released_it(lender):
    first, lease = lender.lend("peer", "peer", buffers(MB))
    second, _ = lender.lend("peer", "peer", buffers(MB))
    assert first[0].segment != second[0].segment

    assert lender.release("someone-else", [first[0].segment], [lease]) == 0, "only the borrower may release"
    assert lender.release("peer", [first[0].segment], [lease]) == 1
    third, _ = lender.lend("peer", "peer", buffers(MB))

    assert third[0].segment == first[0].segment and lender.created == 2


def test_a_peer_past_its_limit_gets_frames_and_a_reclaimed_peer_leaves_nothing(lender):
    for _ in range(4):
        assert lender.lend("greedy", "greedy-0", buffers(2 * MB)) is not None
    assert lender.lend("greedy", "greedy-0", buffers(2 * MB)) is None, "8 MiB is the limit"
    assert lender.lend("modest", "modest-0", buffers(2 * MB)) is not None, "the limit is per peer"

    lender.reclaim_named("greedy-0")

    assert len(lender.loans) == 1 and len(troupe_segments(pid=os.getpid())) == 1


def test_released_segments_beyond_the_pool_limit_are_removed(lender):
    lent = [lender.lend("peer", "peer", buffers(2 * MB)) for _ in range(3)]
    for places, lease in lent:
        lender.release("peer", [places[0].segment], [lease])
    assert lender.stats.pooled_bytes == 4 * MB and len(troupe_segments(pid=os.getpid())) == 2


async def test_an_envelope_round_trips_through_a_segment_and_freeing_it_releases_the_loan(lender):
    released: list[SharedRelease] = []

    class Route:
        def send_release(self, release: SharedRelease) -> None:
            released.append(release)

    borrower = Borrower()
    sent = {"big": torch.arange(MB // 8, dtype=torch.int64), "small": torch.ones(3)}
    frames, nbytes = encode_envelope(Envelope("k", "id", "me", 0.0, payload=sent),
                                     lambda views: (lender.lend("peer", "peer", views) or (None, 0))[0])
    assert len(frames) == 2 and nbytes == len(frames[0]) + MB + 12, "one frame for the small tensor"

    received = decode_envelope(frames, open_shared=lambda places: borrower.open(Route(), places)).payload
    assert torch.equal(received["big"], sent["big"]) and torch.equal(received["small"], sent["small"])
    view = received["big"][10:20]
    del received
    gc.collect()
    assert released == [], "a slice still views the segment"
    del view
    borrower._flush()  # what the event loop would run next

    ((segment,),) = [release.segments for release in released]
    (lease,) = lender.loans
    assert released[0].leases == [lease] and lender.release("peer", released[0].segments, released[0].leases) == 1


@pytest.mark.parametrize(("place", "problem"), [
    (["troupe.x.1.0123456789ab.0", 3, 8, 0], "multiple of 64"),
    (["troupe.x.1.0123456789ab.0", 0, -8, 0], "length"),
    (["troupe.x.1.0123456789ab.0", 0, 8, 2**63], "lease"),
    (["troupe.x.0.0123456789ab.0", 0, 8, 0], "not a troupe shared-memory segment"),
    (["troupe.x.1.0123456789AB.0", 0, 8, 0], "not a troupe shared-memory segment"),
    (["troupe..1.0123456789ab.0", 0, 8, 0], "not a troupe shared-memory segment"),
    (["troupe.x.1.0123456789ab.0", 0, 8], "must be \\[segment, offset, length, lease\\]"),
])
def test_a_malformed_place_is_refused_naming_what_is_wrong(place, problem):
    with pytest.raises(ProtocolError, match=problem):
        parse_place(place, "tensor descriptor 0")


def test_a_segment_name_says_its_run_and_owner():
    name = segment_name("my run/../x", 4242, "0123456789ab", 7)
    assert name == "troupe.my-run-x.4242.0123456789ab.7"
    assert segment_owner(name) == ("my-run-x", 4242)
    assert segment_owner("troupe.my-run.4242.0123456789ab.7/../x") is None
