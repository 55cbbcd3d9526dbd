"""Messages between actors and the registry: registration, heartbeats, lookups and
membership watches."""

from __future__ import annotations

from typing import Any, Literal

from protocols.messages import message


@message("registry.record")
class ActorRecord:  # registry -> anyone: what the registry knows of one actor
    name: str
    role: str
    instance: int
    endpoint: str
    pid: int
    host: str
    state: str = "ready"
    """``starting`` until the actor's on_start hook has run, then ``ready`` (roles may
    report their own states, such as ``busy``)."""
    capabilities: dict[str, Any] | None = None
    weights_version: int | None = None
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    messages_in: int = 0
    """Messages received, as of the last heartbeat."""
    messages_out: int = 0
    """Messages sent, as of the last heartbeat."""


@message("registry.register")
class Register:  # actor -> registry
    record: ActorRecord


@message("registry.registered")
class Registered:  # registry -> actor: accepted; heartbeat at least this often
    epoch: int
    heartbeat_interval_s: float
    heartbeat_timeout_s: float


@message("registry.deregister")
class Deregister:  # actor -> registry: leaving on purpose
    name: str
    endpoint: str
    """Only the process registered at this endpoint is removed (a newer one under the same
    name stays)."""


@message("registry.heartbeat")
class Heartbeat:  # actor -> registry: still alive; optional state changes
    name: str
    endpoint: str
    state: str | None = None
    weights_version: int | None = None
    messages_in: int = 0
    messages_out: int = 0


@message("registry.heartbeat_ack")
class HeartbeatAck:  # registry -> actor
    known: bool
    """False when the registry has no record of the actor (it expired or the registry
    restarted): the actor registers again."""
    superseded: bool = False
    """True when another process has registered under the same name since: this one
    must stop."""


@message("registry.lookup")
class Lookup:  # anyone -> registry: actors by name and/or role (None matches all)
    name: str | None = None
    role: str | None = None


@message("registry.lookup_result")
class LookupResult:  # registry -> asker
    epoch: int
    records: list[ActorRecord]


@message("registry.watch")
class Watch:  # actor -> registry: send me MembershipEvents; the reply is a snapshot
    watcher: str
    endpoint: str


@message("registry.unwatch")
class Unwatch:  # actor -> registry
    watcher: str


@message("registry.membership_event")
class MembershipEvent:  # registry -> watcher (tell)
    event: Literal["joined", "left", "updated"]
    epoch: int
    record: ActorRecord
    reason: str = ""
    """Why an actor left: ``"deregistered"`` or ``"heartbeat-timeout"``."""
