"""RoleRouter on its own: a real Membership over a registry double, and an ask function
that plays the instances of a role. No Actor, no sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.errors import ActorDeadError, DeadlineExceeded, RemoteError
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef
from runtime.routing import RoleRouter
from tests.unit.runtime.registry_double import REGISTRY, RegistryDouble, event, membership, record


class Instances:
    """The instances' side of asks: who got what, with which message id; some are dead."""

    def __init__(self, registry: RegistryDouble) -> None:
        self.registry = registry
        self.calls: list[tuple[str, Any, str | None]] = []
        self.dead: set[str] = set()
        self.hold: asyncio.Event | None = None

    async def ask(self, target: ActorRef, message: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        assert target != REGISTRY  # the router asks instances; its membership asks the registry
        self.calls.append((target.name, message, message_id))
        if target.name in self.dead:
            raise ActorDeadError(f"{target.name} died")
        if self.hold is not None:
            await self.hold.wait()
        return f"{target.name} did {message}"


def router_over(*members: Any, timeout: float = 5.0) -> tuple[RoleRouter, Instances]:
    registry = RegistryDouble(members={member.name: member for member in members})
    instances = Instances(registry)
    return RoleRouter(instances.ask, membership(registry), MessageLog(None, "", "caller-0", "caller"), timeout), instances


async def test_only_ready_instances_get_work_and_it_spreads_evenly_over_them():
    router, instances = router_over(record("gen-0"), record("gen-1"), record("gen-2", state="starting"), record("ref-0"))

    replies = [await router.ask("gen", n) for n in range(4)]

    assert replies == ["gen-0 did 0", "gen-1 did 1", "gen-0 did 2", "gen-1 did 3"]


async def test_work_goes_to_the_instance_with_the_fewest_asks_pending():
    router, instances = router_over(record("gen-0"), record("gen-1"))
    instances.hold = asyncio.Event()
    first = asyncio.get_running_loop().create_task(router.ask("gen", "a"))
    await asyncio.sleep(0.01)
    assert router.in_flight == {record("gen-0").endpoint: 1}

    second = asyncio.get_running_loop().create_task(router.ask("gen", "b"))
    await asyncio.sleep(0.01)
    instances.hold.set()

    assert await asyncio.gather(first, second) == ["gen-0 did a", "gen-1 did b"]
    assert not router.in_flight


async def test_work_of_an_instance_that_died_is_redelivered_with_the_same_message_id():
    router, instances = router_over(record("gen-0"), record("gen-1"))
    instances.dead.add("gen-0")

    assert await router.ask("gen", "work") == "gen-1 did work"

    (died, id_first), (answered, id_again) = [(name, message_id) for name, _, message_id in instances.calls]
    assert (died, answered) == ("gen-0", "gen-1") and id_first == id_again
    assert router.redeliveries == 1


async def test_with_no_ready_instance_the_ask_waits_for_one_to_join():
    router, instances = router_over(record("gen-0", state="starting"))
    asking = asyncio.get_running_loop().create_task(router.ask("gen", "work"))
    await asyncio.sleep(0.01)
    assert instances.calls == []

    router.membership.apply(event("updated", record("gen-0", state="ready")))

    assert await asyncio.wait_for(asking, 1.0) == "gen-0 did work"


async def test_with_no_instance_ready_before_the_deadline_the_ask_fails_with_deadline_exceeded():
    router, instances = router_over(record("gen-0"), timeout=0.05)
    instances.dead.add("gen-0")

    with pytest.raises(DeadlineExceeded, match="no live instance of role 'gen' answered within 0.05 s"):
        await router.ask("gen", "work")
    assert [name for name, _, _ in instances.calls] == ["gen-0"]  # a dead instance is not asked again


async def test_a_handler_failure_is_the_answer_and_is_not_redelivered():
    router, instances = router_over(record("gen-0"), record("gen-1"))

    async def failing(target: ActorRef, message: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        instances.calls.append((target.name, message, message_id))
        raise RemoteError(target.name, "ValueError", "bad work")

    router = RoleRouter(failing, router.membership, router.log, 5.0)
    with pytest.raises(RemoteError, match="bad work"):
        await router.ask("gen", "work")
    assert len(instances.calls) == 1 and router.redeliveries == 0
