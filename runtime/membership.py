"""An actor's side of the registry: register, heartbeat, look up, watch.

`Directory` caches where named actors listen, so asks by name resolve without a
round trip; a name whose cached endpoint turned out dead is looked up again.
`Membership` registers one actor, keeps it registered (heartbeats, registering
and watching again if the registry forgot it), and applies membership events to
what it knows. It needs no actor: an ask function, the actor's own record and a
log are enough, so it can be built (and tested) on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

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
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef

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
    """Registration, heartbeats, watching and name resolution for one actor.

    Args:
        ask: an ``ask(target, message, timeout=None)`` coroutine function (the actor's).
        registry: where the registry listens.
        record: the actor's own record (name, endpoint, pid ...) as it registers;
            its state is the state it starts in.
        log: where lifecycle events go; its message counts ride on each heartbeat.
        heartbeat_interval_s: how often to heartbeat until the registry says otherwise.
    """

    def __init__(self, ask: Ask, registry: ActorRef, record: ActorRecord, log: MessageLog, heartbeat_interval_s: float) -> None:
        self.ask = ask
        self.registry = registry
        self.record = record
        self.log = log
        self.directory = Directory(ask, registry)
        self.epoch = 0
        self.state = record.state
        self.weights_version: int | None = None
        self.heartbeat_interval_s = heartbeat_interval_s
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

    async def register(self) -> None:
        """Register (again) under this actor's record, in the state it is in now."""
        record = dataclasses.replace(self.record, state=self.state, registered_at=time.time())
        reply: Registered = await self.ask(self.registry, Register(record))
        self.epoch = reply.epoch
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.log.lifecycle("registry.registered", epoch=reply.epoch, registry=self.registry.endpoint)
        if self.watching:  # the registry forgot our watch along with our record
            await self.watch()

    async def heartbeat(self) -> None:
        ack: HeartbeatAck = await self.ask(
            self.registry,
            Heartbeat(
                self.record.name, self.record.endpoint, state=self.state, weights_version=self.weights_version,
                messages_in=self.log.counts["receive"], messages_out=self.log.counts["send"],
            ),
            timeout=max(1.0, 2 * self.heartbeat_interval_s),
        )
        if ack.superseded:
            # Another process registered under our name (a supervisor restarted us
            # while we were stalled): two actors must not answer to one name.
            raise ActorSuperseded(f"{self.record.name} was replaced by a newer process with the same name")
        if not ack.known:
            # The registry forgot us (we were too slow, or it restarted): register again.
            await self.register()

    async def heartbeat_loop(self) -> None:
        """Heartbeat every interval until cancelled; a missing registry is logged, not fatal."""
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except ActorSuperseded:
                raise  # the actor crashes: it must not keep answering to a name that is not its own
            except ActorError as error:  # the registry may be restarting; keep trying
                self.log.lifecycle("registry.unreachable", error=str(error))
            except ProtocolError as error:  # a malformed answer: keep trying, and say so
                self.log.lifecycle("registry.bad_reply", error=str(error))

    async def set_state(self, state: str) -> None:
        """Report a new state now (and in every later heartbeat, even if this one fails)."""
        self.state = state
        await self.heartbeat()

    async def set_weights_version(self, version: int) -> None:
        """Report the weights version this actor holds now (and in every later heartbeat,
        even if this one fails)."""
        self.weights_version = version
        await self.heartbeat()

    async def deregister(self) -> None:
        try:
            await self.ask(self.registry, Deregister(self.record.name, self.record.endpoint), timeout=1.0)
        except ActorError as error:  # shutting down anyway; the registry will time us out
            self.log.lifecycle("registry.deregister_failed", error=str(error))

    async def watch(self) -> list[ActorRecord]:
        """Start (or renew) the registry's membership events; returns the current members."""
        async with self._watch_lock:  # concurrent first users share one watch
            result: LookupResult = await self.ask(self.registry, Watch(self.record.name, self.record.endpoint))
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

    async def endpoint_of(self, name: str) -> str | None:
        """Where the actor named `name` listens, as the watched membership knows it (None: not registered)."""
        await self.ensure_watching()
        record = self.directory.records.get(name)
        return record.endpoint if record is not None else None

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the next membership event; False if none came."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def apply(self, event: MembershipEvent) -> None:
        """Take a membership event into what is known here. (The actor, which owns the
        connections, fails the asks pending on an actor that left.)"""
        self._changed.set()
        self.epoch = max(self.epoch, event.epoch)
        name = event.record.name
        if event.event == "left":
            gone = self.directory.records.get(name)
            if gone is not None and gone.endpoint == event.record.endpoint:
                del self.directory.records[name]
        else:
            self.directory.records[name] = event.record
