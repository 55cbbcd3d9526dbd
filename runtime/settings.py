"""Runtime settings shared by every actor of a run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from protocols.envelope import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_OBJECTS, DEFAULT_MAX_MESSAGE_BYTES


class RuntimeSettings(BaseModel):
    """How actors talk: deadlines, flow control, limits, heartbeats and logging."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    ask_timeout_s: float = Field(30.0, gt=0)
    """Default deadline of an `ask`, in seconds, when the caller gives none."""
    send_timeout_s: float = Field(30.0, gt=0)
    """Default time a `tell` may wait for flow-control credit before it fails."""
    window_messages: int = Field(64, ge=1)
    """Messages one sender may have in flight to one receiver (queued or being handled)."""
    window_bytes: int = Field(512 << 20, ge=1)
    """Bytes one sender may have in flight to one receiver. A single larger message is
    still allowed when nothing else is in flight, so it never deadlocks."""
    credit_batch: int = Field(8, ge=1)
    """A receiver returns credit for tells after this many are handled, or when idle."""
    mailbox_capacity: int = Field(4096, ge=1)
    """Most messages an actor holds at once, over all senders; beyond it asks are refused
    with MailboxFull and tells are dropped and logged (only senders that ignore credit
    can get there)."""
    stop_grace_s: float = Field(10.0, ge=0)
    """How long a stopping actor lets running handlers finish before cancelling them
    (their askers then get ActorDeadError)."""
    dedup_capacity: int = Field(10_000, ge=0)
    """How many handled message ids (with their replies) an actor remembers, so a
    re-delivered message is answered without being handled twice."""
    concurrency: int = Field(1, ge=1)
    """Handlers an actor runs at once. 1 keeps actor state free of interleaving."""
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    """Largest message an actor accepts; larger ones are refused with a ProtocolError."""
    max_header_bytes: int = Field(DEFAULT_MAX_HEADER_BYTES, ge=1024)
    """Largest header frame (everything but the tensors: structure, strings, lists) an
    actor accepts. Tensors are not counted: they travel in frames of their own."""
    max_header_objects: int = Field(DEFAULT_MAX_HEADER_OBJECTS, ge=1024)
    """Most msgpack values a message's header and payload may decode to; bounds the time
    one message can hold the event loop (about 0.1 s per million)."""
    heartbeat_interval_s: float = Field(1.0, gt=0)
    """How often a registered actor tells the registry it is alive."""
    heartbeat_timeout_s: float = Field(5.0, gt=0)
    """After this long without a heartbeat the registry declares the actor left."""
    disconnect_grace_s: float = Field(0.05, ge=0)
    """After a peer's connection drops, replies already received get this long to be
    read before pending asks to that peer fail with ActorDeadError."""
    stop_linger_s: float = Field(1.0, ge=0)
    """At stop, replies the actor already sent get this long to leave its socket before
    the process exits (they are dropped only if their peer cannot take them)."""
    secret_file: str | None = None
    """File holding the run's shared secret (runtime.security). When set, every connection
    authenticates with it (loopback only). `troupe launch` creates one for every run; None
    (the default for actors started by hand) authenticates nobody."""
    curve_keys_dir: str | None = None
    """Folder of the run's CURVE keys (runtime.security). When set, every socket encrypts
    and authenticates with them instead of the secret; required to bind beyond loopback."""
    shared_memory: bool = True
    """Send large tensors to actors on the same host through shared memory (/dev/shm):
    the sender copies each into a pooled segment once, the receiver's tensor is a view
    on it, and only a small place travels over the socket (runtime.shm). Across hosts,
    over ``inproc://`` and without a usable /dev/shm, tensors travel as socket frames
    whatever this says. False: always socket frames (and refuse shared-memory places)."""
    shared_memory_threshold_bytes: int = Field(1 << 20, ge=4096)
    """Tensors of at least this many bytes go through shared memory; smaller ones travel
    in the message's frames, where a segment would cost more than it saves."""
    shared_memory_max_lent_bytes_per_peer: int = Field(2 << 30, ge=1 << 20)
    """Most bytes of segments one peer may hold at once (tensors it received and still
    keeps). Past it, messages to that peer travel as socket frames until it frees some,
    so a peer that keeps everything, or died without a word, pins a bounded amount."""
    shared_memory_max_pooled_bytes: int = Field(1 << 30, ge=0)
    """Most bytes of released segments an actor keeps for reuse; beyond it a released
    segment is removed instead."""
    log_messages: bool = True
    """Write one JSON line per message event to logs/<instance>.jsonl in the run directory."""
    log_flush_interval_s: float = Field(0.2, gt=0)
    """How often buffered log lines are written out."""
    event_loop: str = Field("uvloop", pattern="^(uvloop|asyncio)$")
    """Event loop for actor processes: uvloop where installed, else asyncio."""
