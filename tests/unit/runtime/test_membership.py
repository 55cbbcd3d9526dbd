"""Membership on its own: an ask function that plays the registry, no Actor, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from protocols.membership import Heartbeat, Lookup, Register, Watch
from runtime.errors import ActorDeadError, ActorSuperseded
from tests.unit.runtime.registry_double import RegistryDouble, event, membership, record


async def test_registering_sends_the_actors_record_and_adopts_the_registrys_heartbeat_interval():
    registry = RegistryDouble(epoch=7, heartbeat_interval_s=0.25)
    member = membership(registry, "gen-0", state="starting")

    await member.register()

    (sent,) = registry.of_type(Register)
    assert (sent.record.name, sent.record.state) == ("gen-0", "starting")
    assert sent.record.registered_at > 0
    assert (member.epoch, member.heartbeat_interval_s) == (7, 0.25)


async def test_a_heartbeat_carries_the_state_the_weights_version_and_the_message_counts():
    registry = RegistryDouble()
    member = membership(registry)
    member.log.counts.update({"receive": 3, "send": 5})

    await member.set_state("busy")
    await member.set_weights_version(4)

    first, second = registry.of_type(Heartbeat)
    assert (first.state, first.weights_version, first.messages_in, first.messages_out) == ("busy", None, 3, 5)
    assert (second.state, second.weights_version) == ("busy", 4)


async def test_a_registry_that_forgot_the_actor_gets_it_registered_again_in_its_current_state():
    registry = RegistryDouble()
    member = membership(registry, state="starting")
    await member.register()
    registry.known = False  # the registry restarted

    await member.set_state("ready")

    first, again = registry.of_type(Register)
    assert (first.record.state, again.record.state) == ("starting", "ready")
    assert registry.members["caller-0"].state == "ready"


async def test_re_registering_renews_the_watch_the_registry_forgot():
    registry = RegistryDouble()
    member = membership(registry)
    await member.register()
    await member.watch()
    registry.known = False

    await member.heartbeat()

    assert len(registry.of_type(Watch)) == 2


async def test_a_heartbeat_answered_superseded_raises_so_the_actor_stops():
    registry = RegistryDouble(superseded=True)
    member = membership(registry, "gen-0")

    with pytest.raises(ActorSuperseded, match="gen-0 was replaced"):
        await member.heartbeat()


async def test_a_resolved_name_is_cached_until_it_is_forgotten():
    registry = RegistryDouble(members={"gen-0": record("gen-0", endpoint="tcp://127.0.0.1:5001")})
    member = membership(registry)

    first = await member.resolve("gen-0")
    second = await member.resolve("gen-0")
    assert (first.name, first.endpoint) == ("gen-0", "tcp://127.0.0.1:5001") and second == first
    assert len(registry.of_type(Lookup)) == 1

    registry.members["gen-0"] = record("gen-0", endpoint="tcp://127.0.0.1:5002")  # restarted elsewhere
    member.forget("gen-0")
    assert (await member.resolve("gen-0")).endpoint == "tcp://127.0.0.1:5002"
    assert len(registry.of_type(Lookup)) == 2


async def test_resolving_a_name_the_registry_does_not_know_raises_actor_dead():
    member = membership(RegistryDouble())

    with pytest.raises(ActorDeadError, match="no actor named 'ghost-0' is registered"):
        await member.resolve("ghost-0")


async def test_concurrent_first_users_share_one_watch():
    registry = RegistryDouble(members={"gen-0": record("gen-0"), "gen-1": record("gen-1", state="starting")})
    member = membership(registry)

    await asyncio.gather(member.ensure_watching(), member.ensure_watching(), member.ensure_watching())

    assert len(registry.of_type(Watch)) == 1
    assert sorted(r.name for r in member.members()) == ["gen-0", "gen-1"]
    assert await member.endpoint_of("gen-1") == registry.members["gen-1"].endpoint
    assert await member.endpoint_of("trainer-0") is None


async def test_a_left_event_removes_a_member_only_if_it_is_the_same_process():
    old = record("gen-0", endpoint="tcp://127.0.0.1:5001")
    registry = RegistryDouble(members={"gen-0": old})
    member = membership(registry)
    await member.watch()
    newer = record("gen-0", endpoint="tcp://127.0.0.1:5002")

    member.apply(event("joined", newer, epoch=3))
    member.apply(event("left", old, epoch=4))  # the old process's leave arrives late

    assert [r.endpoint for r in member.members(role="gen")] == ["tcp://127.0.0.1:5002"]
    assert member.epoch == 4
    member.apply(event("left", newer, epoch=5))
    assert member.members() == []


async def test_waiting_for_a_change_returns_true_on_an_event_and_false_at_its_timeout():
    member = membership(RegistryDouble())

    assert await member.wait_for_change(0.01) is False
    waiting = asyncio.get_running_loop().create_task(member.wait_for_change(5.0))
    await asyncio.sleep(0)
    member.apply(event("joined", record("gen-0")))
    assert await waiting is True
