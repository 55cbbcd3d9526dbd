"""The registry actor: who is running, where, and in what state.

Actors register (name, role, instance, endpoint, pid, host, capabilities, state),
heartbeat, and deregister when they stop. An actor whose heartbeats stop for
`heartbeat_timeout_s` is declared left. Watchers receive a `MembershipEvent` for
every join, leave and update; each change bumps the membership epoch, which later
stages (the weight channel) use to re-form groups.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

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
    Unwatch,
    Watch,
)
from runtime.actor import Actor, handler
from runtime.errors import ActorError
from runtime.outbox import ActorRef


class Registry(Actor):
    """Keeps the membership of a run and tells watchers about changes."""

    role = "registry"

    def __init__(self, name: str = "registry", **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.records: dict[str, ActorRecord] = {}
        self.watchers: dict[str, ActorRef] = {}
        self.epoch = 0

    async def on_start(self) -> None:
        self.start_background(self._expire_silent_actors(), "expiry")

    # ----------------------------------------------------------- handlers
    @handler
    async def register(self, request: Register) -> Registered:
        now = time.time()
        record = replace(request.record, registered_at=now, last_heartbeat=now)
        self.records[record.name] = record
        await self._publish("joined", record)
        return Registered(
            epoch=self.epoch,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
        )

    @handler
    async def deregister(self, request: Deregister) -> None:
        record = self.records.pop(request.name, None)
        self.watchers.pop(request.name, None)
        if record is not None:
            await self._publish("left", record, reason="deregistered")

    @handler
    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAck:
        record = self.records.get(beat.name)
        if record is None:
            return HeartbeatAck(known=False)
        changed = (beat.state is not None and beat.state != record.state) or (
            beat.weights_version is not None and beat.weights_version != record.weights_version
        )
        record = replace(
            record,
            last_heartbeat=time.time(),
            state=beat.state if beat.state is not None else record.state,
            weights_version=beat.weights_version if beat.weights_version is not None else record.weights_version,
        )
        self.records[beat.name] = record
        if changed:
            await self._publish("updated", record)
        return HeartbeatAck(known=True)

    @handler
    async def lookup(self, query: Lookup) -> LookupResult:
        records = [
            record for record in self.records.values()
            if (query.name is None or record.name == query.name) and (query.role is None or record.role == query.role)
        ]
        return LookupResult(epoch=self.epoch, records=records)

    @handler
    async def watch(self, request: Watch) -> LookupResult:
        self.watchers[request.watcher] = ActorRef(request.watcher, request.endpoint)
        return LookupResult(epoch=self.epoch, records=list(self.records.values()))

    @handler
    async def unwatch(self, request: Unwatch) -> None:
        self.watchers.pop(request.watcher, None)

    # ------------------------------------------------------------ internals
    async def _publish(self, event: str, record: ActorRecord, reason: str = "") -> None:
        if event != "updated":
            self.epoch += 1
        notice = MembershipEvent(event=event, epoch=self.epoch, record=record, reason=reason)  # type: ignore[arg-type]
        for name, watcher in list(self.watchers.items()):
            try:
                await self.tell(watcher, notice, timeout=self.settings.heartbeat_timeout_s)
            except ActorError as error:  # a stuck watcher must not stall the registry: drop it
                self.watchers.pop(name, None)
                self.log.lifecycle("registry.watcher_dropped", watcher=name, error=str(error))

    async def _expire_silent_actors(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, self.settings.heartbeat_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.time() - self.settings.heartbeat_timeout_s
            for record in [r for r in self.records.values() if r.last_heartbeat < cutoff]:
                del self.records[record.name]
                self.watchers.pop(record.name, None)
                await self._publish("left", record, reason="heartbeat-timeout")
