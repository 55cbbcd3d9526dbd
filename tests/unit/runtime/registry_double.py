"""A registry played by a plain async function, for testing Membership and RoleRouter
without sockets or an Actor: it answers each registry message the way the real
registry does, and records every message it was sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from protocols.control import Ok
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
from runtime.membership import Membership
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef

REGISTRY = ActorRef("registry", "tcp://127.0.0.1:1")


def record(name: str, state: str = "ready", endpoint: str | None = None, role: str | None = None) -> ActorRecord:
    return ActorRecord(
        name=name, role=role or name.rsplit("-", 1)[0], instance=0,
        endpoint=endpoint or f"tcp://127.0.0.1:{1000 + sum(map(ord, name))}", pid=1, host="h", state=state,
    )


@dataclass
class RegistryDouble:
    members: dict[str, ActorRecord] = field(default_factory=dict)
    sent: list[Any] = field(default_factory=list)
    epoch: int = 1
    known: bool = True
    superseded: bool = False
    heartbeat_interval_s: float = 0.25

    async def ask(self, target: ActorRef, message: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        assert target == REGISTRY
        self.sent.append(message)
        await asyncio.sleep(0)  # a real ask waits for the reply
        if isinstance(message, Register):
            self.members[message.record.name] = message.record
            self.known = True
            return Registered(self.epoch, self.heartbeat_interval_s, 5.0)
        if isinstance(message, Heartbeat):
            return HeartbeatAck(known=self.known, superseded=self.superseded)
        if isinstance(message, Lookup):
            found = [r for r in self.members.values() if message.name in (None, r.name) and message.role in (None, r.role)]
            return LookupResult(self.epoch, found)
        if isinstance(message, Watch):
            return LookupResult(self.epoch, list(self.members.values()))
        if isinstance(message, Deregister):
            self.members.pop(message.name, None)
            return Ok()
        raise AssertionError(f"the registry does not answer {message!r}")

    def of_type(self, kind: type) -> list[Any]:
        return [message for message in self.sent if isinstance(message, kind)]


def event(kind: str, member: ActorRecord, epoch: int = 2) -> MembershipEvent:
    return MembershipEvent(event=kind, record=member, epoch=epoch, reason="test")


def membership(registry: RegistryDouble, name: str = "caller-0", state: str = "starting") -> Membership:
    return Membership(registry.ask, REGISTRY, record(name, state=state), MessageLog(None, "", name, "caller"), 1.0)
