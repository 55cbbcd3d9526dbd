"""An actor's side of the registry: register, heartbeat, look up, watch.

`Membership` keeps a directory of the actors this one has looked up or watched,
so asks by name resolve without a round trip, and applies membership events to
it: when an actor leaves, asks pending on it fail at once with ActorDeadError.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from protocols.membership import (
    ActorRecord,
    Deregister,
    Heartbeat,
    HeartbeatAck,
    Lookup,
    LookupResult,
    MembershipEvent,
    Register,
    Registered,
    Watch,
)
from runtime.errors import ActorDeadError, ActorError
from runtime.outbox import ActorRef

if TYPE_CHECKING:
    from runtime.actor import Actor


class Membership:
    """Registration and name resolution for one actor."""

    def __init__(self, actor: Actor, registry: ActorRef) -> None:
        self.actor = actor
        self.registry = registry
        self.directory: dict[str, ActorRecord] = {}
        self.epoch = 0
        self.state = "starting"
        self.weights_version: int | None = None
        self.heartbeat_interval_s = actor.settings.heartbeat_interval_s
        self._record: ActorRecord | None = None

    async def register(self, record: ActorRecord) -> None:
        self._record = record
        self.state = record.state
        reply: Registered = await self.actor.ask(self.registry, Register(record))
        self.epoch = reply.epoch
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.actor.log.lifecycle("registry.registered", epoch=reply.epoch, registry=self.registry.endpoint)

    async def heartbeat(self) -> None:
        ack: HeartbeatAck = await self.actor.ask(
            self.registry,
            Heartbeat(self.actor.name, state=self.state, weights_version=self.weights_version),
            timeout=max(1.0, 2 * self.heartbeat_interval_s),
        )
        if not ack.known and self._record is not None:
            # The registry forgot us (we were too slow, or it restarted): register again.
            record = self.actor.record(state=self.state)
            await self.register(record)

    async def heartbeat_loop(self) -> None:
        """Heartbeat every interval until cancelled; a missing registry is logged, not fatal."""
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except ActorError as error:  # the registry may be restarting; keep trying
                self.actor.log.lifecycle("registry.unreachable", error=str(error))

    async def set_state(self, state: str) -> None:
        """Report a new state now (and in every later heartbeat)."""
        self.state = state
        await self.heartbeat()

    async def deregister(self) -> None:
        try:
            await self.actor.ask(self.registry, Deregister(self.actor.name), timeout=1.0)
        except ActorError as error:  # shutting down anyway; the registry will time us out
            self.actor.log.lifecycle("registry.deregister_failed", error=str(error))

    async def lookup(self, name: str | None = None, role: str | None = None) -> list[ActorRecord]:
        result: LookupResult = await self.actor.ask(self.registry, Lookup(name=name, role=role))
        for record in result.records:
            self.directory[record.name] = record
        return result.records

    async def watch(self) -> list[ActorRecord]:
        assert self.actor.endpoint is not None
        result: LookupResult = await self.actor.ask(self.registry, Watch(self.actor.name, self.actor.endpoint))
        self.epoch = result.epoch
        self.directory = {record.name: record for record in result.records}
        return result.records

    async def resolve(self, name: str) -> ActorRef:
        record = self.directory.get(name)
        if record is None:
            records = await self.lookup(name=name)
            if not records:
                raise ActorDeadError(f"no actor named {name!r} is registered")
            record = records[0]
        return ActorRef(record.name, record.endpoint)

    def apply(self, event: MembershipEvent) -> None:
        self.epoch = max(self.epoch, event.epoch)
        if event.event == "left":
            gone = self.directory.pop(event.record.name, None)
            if gone is not None:
                self.actor.outbox.peer_gone(gone.endpoint, f"left the registry ({event.reason})")
        else:
            self.directory[event.record.name] = event.record
