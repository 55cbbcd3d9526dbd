"""A process killed with SIGKILL, on either side of a shared-memory transfer, leaves nothing
in /dev/shm once its reaper has cleaned up, and the survivor's tensors stay valid.

The sender's segments are removed by whoever reaps it (`runtime.spawn.ActorProcess.wait`,
which the supervisor uses); a dead receiver's loans are reclaimed by its lender when the
connection drops. Real processes, real ZeroMQ sockets, real /dev/shm.
"""

from __future__ import annotations

import asyncio

from runtime.actor import start_actor
from runtime.settings import RuntimeSettings
from runtime.spawn import spawn_actor
from tests.unit.runtime.shm_actors import (
    FAST_STOP,
    MB,
    Driver,
    Echo,
    Keep,
    Keeper,
    Pitch,
    Report,
    byte_sum,
    eventually,
    filled,
    spawn_keeper,
    troupe_segments,
)


async def test_a_sender_killed_with_sigkill_leaves_nothing_once_reaped_and_its_tensors_stay_valid():
    keeper = Keeper("keeper-here", settings=RuntimeSettings(**FAST_STOP))
    serving = await start_actor(keeper)
    pitcher = await spawn_actor(
        "tests.unit.runtime.shm_actors:Pitcher", "pitcher-0", run="crash-test", settings=RuntimeSettings(**FAST_STOP)
    )
    try:
        await keeper.ask(pitcher.endpoint, Pitch(keeper.endpoint or "", count=4, nbytes=2 * MB))
        held = (await keeper.ask(pitcher.endpoint, Report())).loans
        assert len(held) == 3, "after the first contact every tensor went through shared memory, and is still kept"
        assert troupe_segments(pid=pitcher.pid) == sorted(held.values())
        assert all(name.startswith(f"troupe.crash-test.{pitcher.pid}.") for name in held.values())

        pitcher.kill()
        await pitcher.wait(timeout=10)

        assert troupe_segments(pid=pitcher.pid) == []
        for index in range(4):  # the kept views outlive their segments' names
            assert byte_sum(keeper.kept[f"pitched-{index}"]) == index * 2 * MB
    finally:
        await pitcher.stop()
        keeper.stop()
        await serving
    assert troupe_segments(pid=pitcher.pid) == []


async def test_a_receiver_killed_with_sigkill_leaves_nothing_once_reaped_and_its_loans_are_reclaimed():
    driver = Driver("driver-crash", settings=RuntimeSettings(**FAST_STOP))
    serving = await start_actor(driver)
    keeper = await spawn_keeper("keeper-doomed")
    shared = driver.shared_memory
    assert shared is not None and shared.lender is not None
    try:
        await driver.ask(keeper.endpoint, Report())
        for index in range(3):
            await driver.ask(keeper.endpoint, Keep(f"doomed-{index}", filled(index)))
        echoed = (await driver.ask(keeper.endpoint, Echo(filled(9)))).value  # a view on the keeper's segment
        lent = set(shared.lender.loans.values())
        assert len(lent) >= 3 and troupe_segments(pid=keeper.pid) != []

        keeper.kill()
        await keeper.wait(timeout=10)

        assert troupe_segments(pid=keeper.pid) == [], "the reaper removed the dead receiver's own segments"
        await eventually(lambda: shared.lender.loans == {}, what="the lender to reclaim the dead peer's loans")
        assert not lent & set(troupe_segments()), "what the dead peer held was removed, not pooled"
        assert byte_sum(echoed) == 9 * 2 * MB, "the reply it sent stays valid"
    finally:
        await keeper.stop()
        driver.stop()
        await serving
    await asyncio.sleep(0)
    assert troupe_segments(pid=keeper.pid) == [] and troupe_segments(pid=shared.lender.pid) == []
