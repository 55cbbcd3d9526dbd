"""The generator side of the weight channel.

A generator receives each announced version into staging buckets on a thread of its
own while it keeps generating with the weights it has; only the commit stops it: the
load (copying the staged tensors into the model), clearing whatever it cached under
the old weights, and switching its version all run as one call on its compute
thread, between two generation calls. So a rollout is never produced with weights
older than the version the generator reports, and the pause it sees is the load alone.

A version announced as a delta of the one the generator loaded last is received into
its staging buffers as patches of that version's exact bytes (runtime.weights.staging,
runtime.weights.transfer), so the loader is handed the same full tensors either way.
The commit may arrive while the pieces still do: it waits for them (up to the transfer's
deadline plus its own).

A starting generator joins the publisher from its ``on_start`` and stays unroutable
(state ``starting``) until it holds the current version. A generator the publisher
dropped, or whose publisher restarted, joins again by itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.membership import MembershipEvent
from protocols.weights import (
    BucketSpec,
    PieceSpec,
    WeightsAbort,
    WeightsAnnounce,
    WeightsCommit,
    WeightsJoin,
    WeightsJoined,
    WeightsLoaded,
    WeightsReady,
)
from runtime.actor import Actor, handler
from runtime.errors import ActorDeadError, ActorError
from runtime.weights import group as groups
from runtime.weights.actor import ChannelActor
from runtime.weights.config import WeightChannelConfig
from runtime.weights.layout import check_layout, check_pieces, unpack
from runtime.weights.loader import ModelLoader, Named
from runtime.weights.staging import Staging
from runtime.weights.transfer import Scratch, receive_pieces

__all__ = ["ModelLoader", "Named", "ReceivesWeights", "WeightReceiver"]


@dataclass
class _Incoming:
    version: int
    group_id: int
    buckets: list[BucketSpec]
    pieces: list[PieceSpec]
    buffers: list[torch.Tensor]
    started: float
    staging: int
    writing: threading.Event
    transfer_timeout_s: float
    is_delta: bool = False
    base: list[torch.Tensor] | None = None
    """The base version's buffers, when a delta is received into another set."""
    scratch: Scratch = field(default_factory=Scratch)
    """Where delta payloads land (shared with earlier receives that have stopped)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    received_s: float | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None


class WeightReceiver:
    """One generator's side of the channel.

    Args:
        actor: the generator actor.
        load: copies ``(name, full tensor)`` pairs into the model; runs on the compute thread.
        expected: the names and shapes `load` accepts; announcements that do not fit are
            refused with a clear error (None: no check).
        clear_caches: drops anything computed under the old weights (prefix/KV caches,
            memoised outputs); runs on the compute thread right after `load`.
        config: the channel settings (publisher name, deadlines).
        device: where staging buffers live for the NCCL backend (gloo stages on the CPU).
    """

    def __init__(
        self,
        actor: Actor,
        load: Callable[[Named], None],
        expected: dict[str, tuple[int, ...]] | None = None,
        clear_caches: Callable[[], None] | None = None,
        config: WeightChannelConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.actor = actor
        self.load = load
        self.expected = expected
        self.clear_caches = clear_caches
        self.config = config or WeightChannelConfig()
        self.device = torch.device(device)
        self.version: int | None = None
        """The version loaded (None: the weights it started with)."""
        self._incoming: _Incoming | None = None
        self._group: groups.BroadcastGroup | None = None
        self._stores: dict[tuple[str, int], Any] = {}
        self._staging = Staging()
        self._scratch: tuple[Scratch, threading.Event] | None = None
        self._publisher_endpoint: str | None = None
        self._current = 0
        self._caught_up = asyncio.Event()
        self._joining: asyncio.Task[Any] | None = None

    # --------------------------------------------------------------------- joining
    async def join(self) -> None:
        """Join the publisher and wait until this generator holds the current version.
        Call from ``on_start``: until it returns, the generator is not routable."""
        deadline = time.monotonic() + self.config.join_timeout_s
        while True:
            try:
                reply: WeightsJoined = await self.actor.ask(
                    self.config.publisher, WeightsJoin(self.actor.name, self.actor.endpoint or ""),
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                break
            except ActorDeadError as error:  # the publisher is not up (yet): wait for it
                if time.monotonic() > deadline:
                    raise ActorError(
                        f"{self.actor.name}: publisher {self.config.publisher!r} did not catch it up within "
                        f"{self.config.join_timeout_s:g} s: {error}"
                    ) from error
                await asyncio.sleep(0.5)
        if self.actor.membership is not None:
            self._publisher_endpoint = await self.actor.membership.endpoint_of(self.config.publisher)
        self._current = reply.current
        if reply.version is not None or self._current == 0 or (self.version or 0) >= self._current:
            return
        # Nothing retained to catch up from: wait for the next publication to reach us.
        self._caught_up.clear()
        try:
            await asyncio.wait_for(self._caught_up.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError as error:
            raise ActorError(f"{self.actor.name} holds no version >= {self._current} after {self.config.join_timeout_s:g} s") from error

    def rejoin(self, reason: str) -> None:
        """Join again in the background, unroutable meanwhile (dropped, or a new publisher)."""
        if self._joining is not None and not self._joining.done():
            return
        self.actor.log.lifecycle("weights.rejoining", reason=reason)
        self._joining = self.actor.start_background(self._rejoin(), "weights-rejoin")

    async def _rejoin(self) -> None:
        """Unroutable until caught up; retried with backoff (it keeps serving, and reporting,
        the version it holds meanwhile)."""
        await self._report_state("starting")
        delay = 1.0
        while True:
            try:
                await self.join()
                break
            except ActorError as error:
                self.actor.log.lifecycle("weights.rejoin_failed", error=str(error), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 60.0)
        await self._report_state("ready")

    async def _report_state(self, state: str) -> None:
        membership = self.actor.membership
        if membership is None:
            return
        try:
            await membership.set_state(state)
        except ActorError as error:  # the heartbeat loop reports the new state later
            self.actor.log.lifecycle("registry.unreachable", error=str(error))

    def membership_changed(self, event: MembershipEvent) -> None:
        """A new publisher process (trainer-0 restarted) knows no members: join it."""
        record = event.record
        if event.event == "joined" and record.name == self.config.publisher and self._publisher_endpoint not in (None, record.endpoint):
            self._publisher_endpoint = record.endpoint
            self.rejoin(f"{record.name} restarted")

    # ------------------------------------------------------------------ the phases
    async def announce(self, notice: WeightsAnnounce) -> None:
        if self.expected is not None:
            check_layout(notice.buckets, self.expected)
        check_pieces(notice.buckets, notice.pieces)
        self._cancel_incoming()
        device = self._staging_device(notice.group.backend)
        base: tuple[int, list[torch.Tensor]] | None = None
        if notice.delta_base is not None:
            base = self._staging.base_buffers(notice.delta_base, notice.buckets, device)
        index, buffers = self._staging.target(notice.buckets, device)
        writing = self._staging.start_writing(index)
        incoming = _Incoming(
            notice.version, notice.group.group_id, notice.buckets, notice.pieces, buffers, time.monotonic(), index, writing,
            notice.group.timeout_s, is_delta=base is not None, base=base[1] if base is not None and base[0] != index else None,
        )
        if self._scratch is not None and self._scratch[1].is_set():  # no earlier receiving thread still writes into it
            incoming.scratch = self._scratch[0]
        self._scratch = (incoming.scratch, writing)
        self._incoming = incoming
        incoming.task = self.actor.start_background(self._receive(notice, incoming), f"weights-receive-{notice.version}")

    async def _receive(self, notice: WeightsAnnounce, incoming: _Incoming) -> None:
        """Join the group if it is new, then receive every piece (never raises: the
        outcome is recorded for the commit)."""
        spec = notice.group
        receiving = False
        try:
            if self._group is None or self._group.spec != spec:  # a new group, or a restarted publisher's
                self._drop_group()
                store = await self._store(spec.store_host, spec.store_port)
                local = groups.local_address_towards(spec.store_host)
                self._group = await groups.in_thread(
                    groups.BroadcastGroup.create, spec, store, local, self._staging_device(spec.backend), name="weights-join",
                )
                try:  # informational: the group has formed either way
                    await self.actor.tell(self.config.publisher, WeightsReady(self.actor.name, notice.version, spec.group_id))
                except ActorError as error:
                    self.actor.log.lifecycle("weights.ready_not_sent", error=str(error))
            group = self._group
            deadline = time.monotonic() + spec.timeout_s
            receiving = True
            await groups.in_thread(self._receive_all, group, incoming, deadline, name="weights-recv")
            incoming.received_s = time.monotonic() - incoming.started
        except asyncio.CancelledError:
            incoming.error = "aborted"
            raise
        except Exception as error:  # noqa: BLE001 - reported to the publisher at commit
            incoming.error = f"{type(error).__name__}: {error}"
            self._drop_group()
        finally:
            if not receiving:
                incoming.writing.set()  # no thread ever wrote into the buffers
            incoming.done.set()

    async def commit(self, request: WeightsCommit) -> WeightsLoaded:
        incoming = self._incoming
        if incoming is None or incoming.version != request.version:
            have = "nothing" if incoming is None else f"version {incoming.version}"
            raise ActorError(f"{self.actor.name} was asked to commit version {request.version} but is receiving {have}")
        # the commit is asked as the transfer starts: wait for the transfer, then load
        waited = incoming.transfer_timeout_s + self.config.commit_timeout_s
        try:
            await asyncio.wait_for(incoming.done.wait(), waited)
        except asyncio.TimeoutError as error:
            raise ActorError(f"version {request.version} was not fully received within {waited:g} s") from error
        if incoming.error is not None:
            if self._incoming is incoming:  # an abort may have been followed by a new announcement: keep that one
                self._incoming = None
            raise ActorError(f"receiving version {request.version} failed: {incoming.error}")
        load_s = await self.actor.compute.run(self._load, incoming)
        if self._incoming is incoming:  # a newer announcement may have arrived meanwhile: keep it
            self._incoming = None
        membership = self.actor.membership
        if membership is not None:
            try:
                await membership.set_weights_version(incoming.version)  # the registry knows the new version now
            except ActorError as error:  # the heartbeat loop reports it later
                self.actor.log.lifecycle("registry.unreachable", error=str(error))
        if self.version is not None and self.version >= self._current:
            self._caught_up.set()
        self.actor.log.lifecycle("weights.loaded", version=incoming.version, load_s=round(load_s, 4))
        return WeightsLoaded(self.actor.name, incoming.version, incoming.received_s or 0.0, load_s)

    def _load(self, incoming: _Incoming) -> float:
        """Load, clear caches and switch versions in one compute-thread call."""
        started = time.monotonic()
        named: Iterator[tuple[str, torch.Tensor]] = (
            pair for bucket, flat in zip(incoming.buckets, incoming.buffers) for pair in unpack(bucket, flat)
        )
        self.load(named)
        self._staging.loaded(incoming.staging, incoming.version, adopted=getattr(self.load, "adopts_buffers", False))
        if self.clear_caches is not None:
            self.clear_caches()
        self.version = incoming.version
        return time.monotonic() - started

    async def abort(self, notice: WeightsAbort) -> None:
        incoming = self._incoming
        if incoming is not None and incoming.version == notice.version:
            self._cancel_incoming()
        self._drop_group()
        self.actor.log.lifecycle("weights.aborted", version=notice.version, reason=notice.reason, rejoin=notice.rejoin)
        if notice.rejoin:
            self.rejoin(f"dropped from the channel: {notice.reason}")

    def received_piece(self, index: int) -> None:
        """Piece `index` of the version being received is in place (called on the receiving
        thread); a subclass may override it to watch progress."""

    def _receive_all(self, group: groups.BroadcastGroup, incoming: _Incoming, deadline: float) -> None:
        try:
            receive_pieces(
                group, incoming.pieces, incoming.buffers, deadline, is_delta=incoming.is_delta, base=incoming.base,
                scratch=incoming.scratch, on_piece=self.received_piece,
            )
        finally:
            incoming.writing.set()

    # ------------------------------------------------------------------- internals
    def _cancel_incoming(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None and incoming.task is not None and not incoming.task.done():
            incoming.task.cancel()

    def _drop_group(self) -> None:
        if self._group is not None:
            self._group.abort()
        self._group = None

    def _staging_device(self, backend: str) -> torch.device:
        return self.device if backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Let the group and the store go (the generator is stopping)."""
        self._cancel_incoming()
        self._drop_group()
        self._stores = {}

    async def _store(self, host: str, port: int) -> Any:
        store = self._stores.get((host, port))
        if store is None:
            store = await groups.in_thread(groups.connect_store, host, port, self.config.ready_timeout_s, name="weights-store")
            self._stores = {(host, port): store}  # a new publisher's store replaces the old one
        return store


class ReceivesWeights(ChannelActor):
    """Base of generator actors: answers the channel's phases urgently (beside a running
    generation). Subclasses set ``self.weights = WeightReceiver(...)`` and call
    ``await self.weights.join()`` at the end of their ``on_start``."""

    weights: WeightReceiver

    @handler(urgent=True)
    async def _weights_announce(self, notice: WeightsAnnounce) -> None:
        await self.weights.announce(notice)

    @handler(urgent=True)
    async def _weights_commit(self, request: WeightsCommit) -> WeightsLoaded:
        return await self.weights.commit(request)

    @handler(urgent=True)
    async def _weights_abort(self, notice: WeightsAbort) -> None:
        await self.weights.abort(notice)

    async def on_membership(self, event: MembershipEvent) -> None:
        self.weights.membership_changed(event)
