"""An actor's side of the registry: register, heartbeat, look up, watch.

`Directory` caches where named actors listen, so asks by name resolve without a
round trip; a name whose cached endpoint turned out dead is looked up again.
`Membership` registers one actor, keeps it registered (heartbeats, registering
and watching again if the registry forgot it), and applies membership events:
when an actor leaves, asks pending on it fail at once with ActorDeadError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from protocols.errors import ProtocolError
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
from runtime.errors import ActorDeadError, ActorError, ActorSuperseded
from runtime.outbox import ActorRef

if TYPE_CHECKING:
    from runtime.actor import Actor

Ask = Callable[..., Awaitable[Any]]


class Directory:
    """Name -> record cache over registry lookups.

    Args:
        ask: an ``ask(target, message, timeout=None)`` coroutine function.
        registry: where the registry listens.
    """

    def __init__(self, ask: Ask, registry: ActorRef) -> None:
        self.ask = ask
        self.registry = registry
        self.records: dict[str, ActorRecord] = {}

    async def lookup(self, name: str | None = None, role: str | None = None) -> list[ActorRecord]:
        result: LookupResult = await self.ask(self.registry, Lookup(name=name, role=role))
        for record in result.records:
            self.records[record.name] = record
        return result.records

    async def resolve(self, name: str) -> ActorRef:
        """Where `name` listens (cached); ActorDeadError if the registry does not know it."""
        record = self.records.get(name)
        if record is None:
            records = await self.lookup(name=name)
            if not records:
                raise ActorDeadError(f"no actor named {name!r} is registered")
            record = records[0]
        return ActorRef(record.name, record.endpoint)

    def forget(self, name: str) -> None:
        """Drop a cached entry (its endpoint is dead); the next resolve asks the registry."""
        self.records.pop(name, None)


class Membership:
    """Registration, heartbeats, watching and name resolution for one actor."""

    def __init__(self, actor: Actor, registry: ActorRef) -> None:
        self.actor = actor
        self.registry = registry
        self.directory = Directory(actor.ask, registry)
        self.epoch = 0
        self.state = "starting"
        self.weights_version: int | None = None
        self.heartbeat_interval_s = actor.settings.heartbeat_interval_s
        self.watching = False
        self._changed = asyncio.Event()
        self._watch_lock = asyncio.Lock()

    # Name resolution, used by the actor's outbox.
    async def resolve(self, name: str) -> ActorRef:
        return await self.directory.resolve(name)

    def forget(self, name: str) -> None:
        self.directory.forget(name)

    async def lookup(self, name: str | None = None, role: str | None = None) -> list[ActorRecord]:
        return await self.directory.lookup(name=name, role=role)

    def members(self, role: str | None = None) -> list[ActorRecord]:
        """The actors known here (all of them, once watching), optionally of one role."""
        return [record for record in self.directory.records.values() if role is None or record.role == role]

    async def register(self, record: ActorRecord) -> None:
        self.state = record.state
        reply: Registered = await self.actor.ask(self.registry, Register(record))
        self.epoch = reply.epoch
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.actor.log.lifecycle("registry.registered", epoch=reply.epoch, registry=self.registry.endpoint)
        if self.watching:  # the registry forgot our watch along with our record
            await self.watch()

    async def heartbeat(self) -> None:
        assert self.actor.endpoint is not None
        ack: HeartbeatAck = await self.actor.ask(
            self.registry,
            Heartbeat(
                self.actor.name, self.actor.endpoint, state=self.state, weights_version=self.weights_version,
                messages_in=self.actor.log.counts["receive"], messages_out=self.actor.log.counts["send"],
            ),
            timeout=max(1.0, 2 * self.heartbeat_interval_s),
        )
        if ack.superseded:
            # Another process registered under our name (a supervisor restarted us
            # while we were stalled): two actors must not answer to one name.
            raise ActorSuperseded(f"{self.actor.name} was replaced by a newer process with the same name")
        if not ack.known:
            # The registry forgot us (we were too slow, or it restarted): register again.
            await self.register(self.actor.record(state=self.state))

    async def heartbeat_loop(self) -> None:
        """Heartbeat every interval until cancelled; a missing registry is logged, not fatal."""
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except ActorSuperseded:
                raise  # the actor crashes: it must not keep answering to a name that is not its own
            except ActorError as error:  # the registry may be restarting; keep trying
                self.actor.log.lifecycle("registry.unreachable", error=str(error))
            except ProtocolError as error:  # a malformed answer: keep trying, and say so
                self.actor.log.lifecycle("registry.bad_reply", error=str(error))

    async def set_state(self, state: str) -> None:
        """Report a new state now (and in every later heartbeat)."""
        self.state = state
        await self.heartbeat()

    async def deregister(self) -> None:
        assert self.actor.endpoint is not None
        try:
            await self.actor.ask(self.registry, Deregister(self.actor.name, self.actor.endpoint), timeout=1.0)
        except ActorError as error:  # shutting down anyway; the registry will time us out
            self.actor.log.lifecycle("registry.deregister_failed", error=str(error))

    async def watch(self) -> list[ActorRecord]:
        """Start (or renew) the registry's membership events; returns the current members."""
        assert self.actor.endpoint is not None
        async with self._watch_lock:  # concurrent first users share one watch
            result: LookupResult = await self.actor.ask(self.registry, Watch(self.actor.name, self.actor.endpoint))
            self.epoch = result.epoch
            self.directory.records = {record.name: record for record in result.records}
            self.watching = True
            self._changed.set()  # the snapshot is news to anyone waiting for members
        return result.records

    async def ensure_watching(self) -> None:
        if not self.watching:
            async with self._watch_lock:
                pass  # someone else's watch may be under way: wait for it
            if not self.watching:
                await self.watch()

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the next membership event; False if none came."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def apply(self, event: MembershipEvent) -> None:
        self._changed.set()
        self.epoch = max(self.epoch, event.epoch)
        name = event.record.name
        if event.event == "left":
            gone = self.directory.records.get(name)
            if gone is not None and gone.endpoint == event.record.endpoint:
                del self.directory.records[name]
            self.actor.outbox.peer_gone(event.record.endpoint, f"left the registry ({event.reason})")
        else:
            self.directory.records[name] = event.record
