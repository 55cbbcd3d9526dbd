"""The registry actor: who is running, where, and in what state.

Actors register (name, role, instance, endpoint, pid, host, capabilities, state),
heartbeat, and deregister when they stop. An actor whose heartbeats stop for
`heartbeat_timeout_s` is declared left. Watchers receive a `MembershipEvent` for
every join, leave and update; each change bumps the membership epoch, which later
stages (the weight channel) use to re-form groups.

The registry's own log says who joined and left, from which host, with which
capabilities (``registry.joined``, ``registry.left``): `troupe logs` shows each
actor's host from these lines. An actor hands out an address of its own (trainer rank
0's rendezvous store, roles.rendezvous) by registering again with it in its record's
``capabilities``; the others find it with a `Lookup`.
"""

from __future__ import annotations

import asyncio
import socket
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


WATCHER_QUEUE = 1024
"""Membership events waiting for one watcher; a watcher that falls this far behind is dropped."""


class _Watcher:
    """Delivers membership events to one watcher, in order, without holding up the registry."""

    def __init__(self, ref: ActorRef, registry: Registry) -> None:
        self.ref = ref
        self.queue: asyncio.Queue[MembershipEvent] = asyncio.Queue(WATCHER_QUEUE)
        self.task = registry.start_background(self._deliver(registry), f"watch-{ref.name}")

    async def _deliver(self, registry: Registry) -> None:
        while True:
            event = await self.queue.get()
            try:
                await registry.tell(self.ref, event, timeout=registry.settings.heartbeat_timeout_s)
            except ActorError as error:  # a stuck or dead watcher is dropped, the registry goes on
                registry.drop_watcher(self.ref.name, f"delivery failed: {error}")
                return


class Registry(Actor):
    """Keeps the membership of a run and tells watchers about changes.

    Records are keyed by name; a record belongs to the process registered at its
    endpoint. A new process registering under a taken name replaces the old record
    (watchers see the old one leave with reason ``replaced``); the old process's
    later heartbeats are answered ``superseded`` and its deregistration is ignored.
    """

    role = "registry"

    def __init__(self, name: str = "registry", **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.records: dict[str, ActorRecord] = {}
        self.watchers: dict[str, _Watcher] = {}
        self.epoch = 0

    async def on_start(self) -> None:
        self.log.lifecycle("registry.serving", host=socket.gethostname(), endpoint=self.endpoint)
        self.start_background(self._expire_silent_actors(), "expiry")

    # ----------------------------------------------------------- handlers
    @handler
    async def register(self, request: Register) -> Registered:
        now = time.time()
        record = replace(request.record, registered_at=now, last_heartbeat=now)
        previous = self.records.get(record.name)
        if previous is not None and previous.endpoint != record.endpoint:
            self._forget(previous, "replaced")
        self.records[record.name] = record
        self.log.lifecycle(  # who runs where, for `troupe logs` (launch.logs.Names)
            "registry.joined", name=record.name, instance=record.instance, host=record.host, pid=record.pid,
            endpoint=record.endpoint, capabilities=record.capabilities,
        )
        self._publish("joined", record)
        return Registered(
            epoch=self.epoch,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
        )

    @handler
    async def deregister(self, request: Deregister) -> None:
        record = self.records.get(request.name)
        if record is not None and record.endpoint == request.endpoint:
            self._forget(record, "deregistered")

    @handler
    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAck:
        record = self.records.get(beat.name)
        if record is None:
            return HeartbeatAck(known=False)
        if record.endpoint != beat.endpoint:
            return HeartbeatAck(known=False, superseded=True)
        changed = (beat.state is not None and beat.state != record.state) or (
            beat.weights_version is not None and beat.weights_version != record.weights_version
        )
        record = replace(
            record,
            last_heartbeat=time.time(),
            state=beat.state if beat.state is not None else record.state,
            weights_version=beat.weights_version if beat.weights_version is not None else record.weights_version,
            messages_in=beat.messages_in,
            messages_out=beat.messages_out,
        )
        self.records[beat.name] = record
        if changed:
            self._publish("updated", record)
        return HeartbeatAck(known=True)

    @handler
    async def answer_lookup(self, query: Lookup) -> LookupResult:
        records = [
            record for record in self.records.values()
            if (query.name is None or record.name == query.name) and (query.role is None or record.role == query.role)
        ]
        return LookupResult(epoch=self.epoch, records=records)

    @handler
    async def watch(self, request: Watch) -> LookupResult:
        self.drop_watcher(request.watcher, "watching again")
        self.watchers[request.watcher] = _Watcher(ActorRef(request.watcher, request.endpoint), self)
        return LookupResult(epoch=self.epoch, records=list(self.records.values()))

    @handler
    async def unwatch(self, request: Unwatch) -> None:
        self.drop_watcher(request.watcher, "unwatched")

    # ------------------------------------------------------------ internals
    def drop_watcher(self, name: str, reason: str) -> None:
        watcher = self.watchers.pop(name, None)
        if watcher is not None:
            if watcher.task is not asyncio.current_task():
                watcher.task.cancel()
            self.log.lifecycle("registry.watcher_dropped", watcher=name, reason=reason)

    def _forget(self, record: ActorRecord, reason: str) -> None:
        del self.records[record.name]
        self.log.lifecycle("registry.left", name=record.name, host=record.host, pid=record.pid, reason=reason)
        watcher = self.watchers.get(record.name)
        if watcher is not None and watcher.ref.endpoint == record.endpoint:
            self.drop_watcher(record.name, f"its actor left ({reason})")
        self._publish("left", record, reason=reason)

    def _publish(self, event: str, record: ActorRecord, reason: str = "") -> None:
        if event != "updated":
            self.epoch += 1
        notice = MembershipEvent(event=event, epoch=self.epoch, record=record, reason=reason)  # type: ignore[arg-type]
        for name, watcher in list(self.watchers.items()):
            try:
                watcher.queue.put_nowait(notice)
            except asyncio.QueueFull:
                self.drop_watcher(name, f"{WATCHER_QUEUE} events behind")

    async def _expire_silent_actors(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, self.settings.heartbeat_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.time() - self.settings.heartbeat_timeout_s
            for record in [r for r in self.records.values() if r.last_heartbeat < cutoff]:
                self._forget(record, "heartbeat-timeout")
