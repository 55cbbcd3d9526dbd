"""The trainer side of the weight channel.

Every trainer rank calls `WeightPublisher.publish(model)` for each publication (the
controller sends `PublishWeights` to all of them). Each rank walks the model's
tensors in the same order and gathers FSDP2 shards to full tensors one at a time on
its compute thread, so every rank takes part in every gather and the gathers run in
the same order everywhere. Rank 0 packs the full tensors into per-dtype buckets and a
sender thread broadcasts each bucket as soon as it is complete, on the broadcast
group (never the FSDP group), while packing goes on.

Rank 0 runs the phases against the generators that joined (`WeightsJoin`):
announce -> ready (a new group forms only when the members changed) -> transfer ->
commit, each under its deadline from `WeightChannelConfig`. A generator that fails a
phase is dropped from the channel and told so; when a transfer fails, the survivors
are caught up from the retained buckets in a new group. `publish` therefore always
returns, within `WeightPublisher.deadline_s`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from protocols.weights import (
    BucketSpec,
    GroupSpec,
    PublishReport,
    PublishWeights,
    WeightsAbort,
    WeightsAnnounce,
    WeightsCommit,
    WeightsJoin,
    WeightsJoined,
    WeightsLoaded,
    WeightsReady,
)
from runtime.actor import Actor, handler
from runtime.errors import ActorError
from runtime.outbox import ActorRef
from runtime.weights import group as groups
from runtime.weights.actor import ChannelActor
from runtime.weights.config import WeightChannelConfig
from runtime.weights.layout import (
    TensorMeta,
    allocate,
    plan_buckets,
    slots,
    total_bytes,
)

if TYPE_CHECKING:
    import torch.distributed as dist

NameMap = Callable[[str], "str | None"]
"""Turns a trainer tensor name into the generator's name, or None to leave it out."""


class WeightsError(ActorError):
    """A publication or a catch-up could not be carried out."""


# ---------------------------------------------------------------- gathering and packing
def named_tensors(model: torch.nn.Module, name_map: NameMap | None = None) -> list[tuple[str, torch.Tensor]]:
    """The model's state (parameters and persistent buffers) under generator names, in a
    fixed order; FSDP2 shards stay sharded (DTensors) until `gather`."""
    named = []
    for name, tensor in model.state_dict().items():
        mapped = name_map(name) if name_map is not None else name
        if mapped is not None:
            named.append((mapped, tensor))
    return named


def tensor_metas(named: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in named]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor: an all-gather over the FSDP group for a DTensor shard (every rank
    must call it, in the same order), the tensor itself otherwise."""
    full_tensor = getattr(tensor, "full_tensor", None)
    full = full_tensor() if full_tensor is not None else tensor
    return full.detach()


class BucketStream:
    """Complete buckets, handed from the packer (compute thread) to the sender thread.

    With a capacity, the packer waits while that many buckets are waiting to be sent
    (two: double buffering). Once closed (the transfer failed), `put` drops buckets so
    the packer, whose gathers the other ranks wait on, always runs to the end.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._ready: dict[int, torch.Tensor] = {}
        self._closed = False
        self._changed = threading.Condition()

    def put(self, index: int, flat: torch.Tensor) -> None:
        with self._changed:
            while self.capacity is not None and len(self._ready) >= self.capacity and not self._closed:
                self._changed.wait()
            if not self._closed:
                self._ready[index] = flat
                self._changed.notify_all()

    def take(self, index: int, deadline: float) -> torch.Tensor:
        with self._changed:
            while index not in self._ready:
                if self._closed:
                    raise WeightsError("the bucket stream was closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"bucket {index} was not packed before the transfer deadline")
                self._changed.wait(left)
            flat = self._ready.pop(index)
            self._changed.notify_all()
            return flat

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ready.clear()
            self._changed.notify_all()


def pack(
    named: Sequence[tuple[str, torch.Tensor]],
    buckets: Sequence[BucketSpec],
    buffers: list[torch.Tensor] | None,
    stream: BucketStream | None,
    device: torch.device,
) -> float:
    """Gather every tensor in order; with `buffers` or a `stream`, pack them into buckets
    (fresh ones when `buffers` is None) and hand each complete bucket to `stream`.
    Returns the seconds spent."""
    started = time.monotonic()
    where = slots(buckets)
    remaining = [len(bucket.tensors) for bucket in buckets]
    fresh: dict[int, torch.Tensor] = {}
    for name, tensor in named:
        full = gather(tensor)
        if buffers is None and stream is None:
            continue  # a rank other than 0: it takes part in the gathers only
        slot = where[name]
        if buffers is not None:
            flat = buffers[slot.bucket]
        else:
            flat = fresh.get(slot.bucket)
            if flat is None:
                flat = fresh[slot.bucket] = allocate(buckets[slot.bucket], device)
        flat[slot.offset : slot.offset + slot.numel].copy_(full.reshape(-1))
        remaining[slot.bucket] -= 1
        if remaining[slot.bucket] == 0:
            fresh.pop(slot.bucket, None)
            if stream is not None:
                stream.put(slot.bucket, flat)
    return time.monotonic() - started


def send_all(group: groups.BroadcastGroup, count: int, take: Callable[[int, float], torch.Tensor], deadline: float) -> None:
    """Broadcast buckets 0..count-1 in order (runs on its own thread)."""
    for index in range(count):
        flat = take(index, deadline)
        if flat.numel():
            group.broadcast(flat, max(0.001, deadline - time.monotonic()))


# ------------------------------------------------------------------------ the publisher
@dataclass
class _Retained:
    version: int
    buckets: list[BucketSpec]
    buffers: list[torch.Tensor]
    device: torch.device

    def take(self, index: int, deadline: float) -> torch.Tensor:
        return self.buffers[index]


@dataclass
class _Slot:
    """A broadcast group and the members it was formed for: publications use one, each
    catch-up of a joining generator a private one (so a join never waits on, or makes
    wait, a publication)."""

    group: groups.BroadcastGroup | None = None
    key: tuple[tuple[str, str], ...] = ()

    def forget(self) -> None:
        if self.group is not None:
            self.group.abort()
        self.group, self.key = None, ()


@dataclass
class _Outcome:
    committed: dict[str, WeightsLoaded] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    survivors: dict[str, ActorRef] = field(default_factory=dict)
    """Members that are alive but did not get the version (the transfer failed)."""


class WeightPublisher:
    """One trainer rank's side of the channel.

    Args:
        actor: the trainer actor (rank 0 must be the actor named ``config.publisher``).
        rank: this trainer's rank; only rank 0 talks to generators.
        config: bucket size, deadlines, retention.
        name_map: trainer name -> generator name (None drops a tensor), e.g. for a
            backend that names parameters differently.
    """

    def __init__(self, actor: Actor, rank: int, config: WeightChannelConfig | None = None, name_map: NameMap | None = None) -> None:
        self.actor = actor
        self.rank = rank
        self.config = config or WeightChannelConfig()
        self.name_map = name_map
        self.version = 0
        """The last version published (restore it from a checkpoint to continue numbering)."""
        self.members: dict[str, ActorRef] = {}
        self._lock = asyncio.Lock()
        self._store: dist.TCPStore | None = None
        self._store_host = ""
        self._main = _Slot()
        self._group_ids = itertools.count(1)
        self._ready: dict[int, set[str]] = {}
        self._retained: _Retained | None = None
        self._buffers: tuple[list[BucketSpec], list[torch.Tensor], torch.device] | None = None
        self._catching_up: dict[int, int] = {}
        """id(buffers) -> catch-ups reading them: a publication never overwrites those."""

    ANNOUNCE_ROUNDS = 2
    """Announce rounds per delivery: after the first failures the group is re-formed once;
    members failing the second round are dropped and the rest catch up next time."""

    @property
    def deadline_s(self) -> float:
        """The longest a `publish` can take beyond gathering: a delivery and the retry of
        its survivors, each at most two announce rounds (ask + abort) and every other
        phase once, plus the abort after a failed transfer."""
        c = self.config
        delivery = self.ANNOUNCE_ROUNDS * 2 * c.announce_timeout_s + c.ready_timeout_s + c.transfer_timeout_s
        delivery += max(c.commit_timeout_s, c.announce_timeout_s) + 1.0
        return 2 * delivery

    # ------------------------------------------------------------------ publishing
    async def publish(self, model: torch.nn.Module, republish: bool = False) -> PublishReport:
        """Publish the model's current weights as the next version (call on every rank);
        with `republish`, as the version already held (`version`, restored from a
        checkpoint), so numbering goes on as if the run had not stopped."""
        async with self._lock:
            started = time.monotonic()
            if republish and self.version < 1:
                raise WeightsError(f"{self.actor.name} has no version to publish again (it holds {self.version}): "
                                   "load a checkpoint first, or publish without republish")
            version = self.version if republish else self.version + 1
            named = named_tensors(model, self.name_map)
            buckets = plan_buckets(tensor_metas(named), int(self.config.bucket_mb * (1 << 20)))
            device = _device_of(named)
            nbytes = total_bytes(buckets)
            if self.rank != 0:
                gather_s = await self.actor.compute.run(pack, named, buckets, None, None, device)
                self.version = version
                return PublishReport(version, self.rank, [], {}, [], nbytes, len(buckets), gather_s, time.monotonic() - started)
            try:
                members = await self._live_members()
            except ActorError as error:  # the registry is unreachable: still gather, the other ranks wait on us
                self.actor.log.lifecycle("weights.members_unknown", error=str(error))
                members = {}
            keep = self.config.keep_last
            buffers = self._reusable_buffers(buckets, device) if keep else None
            stream = BucketStream(None if keep else 2) if members else None
            self._retained = None  # the retained buffers are being overwritten
            packing = asyncio.ensure_future(self.actor.compute.run(pack, named, buckets, buffers, stream, device))
            outcome = _Outcome()
            try:
                if members:
                    assert stream is not None
                    outcome = await self._deliver(self._main, version, buckets, members, stream.take, device)
            finally:
                if stream is not None:
                    stream.close()
                gather_s = await packing
            if buffers is not None:
                self._retained = _Retained(version, buckets, buffers, device)
            retried = False
            if outcome.survivors and self._retained is not None:
                retried = True
                again = await self._deliver(self._main, version, buckets, outcome.survivors, self._retained.take, device)
                outcome.committed.update(again.committed)
                outcome.dropped.update(again.dropped)
                outcome.survivors = again.survivors
            self.version = version
            report = PublishReport(
                version, 0, sorted(outcome.committed), outcome.dropped, sorted(outcome.survivors), nbytes, len(buckets),
                gather_s, time.monotonic() - started, max((loaded.load_s for loaded in outcome.committed.values()), default=0.0),
                retried,
            )
            self.actor.log.lifecycle(
                "weights.published", version=version, committed=report.committed, dropped=report.dropped,
                missed=report.missed, nbytes=nbytes, buckets=len(buckets), total_s=round(report.total_s, 4), retried=retried,
            )
            return report

    async def join(self, request: WeightsJoin) -> WeightsJoined:
        """A generator joins: catch it up to the retained version, then count it a member.

        The catch-up runs in a group of its own, outside the publication lock, so
        training never waits on a joining generator. If a publication finished
        meanwhile, the catch-up is repeated with its version; the member is added under
        the lock, so no publication can slip between its catch-up and its membership.
        """
        if self.rank != 0:
            raise WeightsError(f"{self.actor.name} is trainer rank {self.rank}; generators join rank 0")
        ref = ActorRef(request.name, request.endpoint)
        async with self._lock:
            self.members.pop(request.name, None)  # an older process under the same name is gone
        caught_up: int | None = None
        for _ in range(3):
            async with self._lock:
                retained = self._retained
                if retained is None or retained.version == caught_up:
                    self.members[request.name] = ref
                    return WeightsJoined(version=caught_up, current=self.version)
                self._catching_up[id(retained.buffers)] = self._catching_up.get(id(retained.buffers), 0) + 1
            try:
                await self._catch_up(ref, retained)
            finally:
                left = self._catching_up.pop(id(retained.buffers)) - 1
                if left:
                    self._catching_up[id(retained.buffers)] = left
            caught_up = retained.version
        raise WeightsError(f"{request.name} could not be caught up: a newer version was published during each of 3 catch-ups")

    async def _catch_up(self, ref: ActorRef, retained: _Retained) -> None:
        slot = _Slot()
        try:
            outcome = await self._deliver(slot, retained.version, retained.buckets, {ref.name: ref}, retained.take, retained.device)
        finally:
            slot.forget()
        if ref.name not in outcome.committed:
            reason = outcome.dropped.get(ref.name, "the transfer failed")
            raise WeightsError(f"catching {ref.name} up to version {retained.version} failed: {reason}")
        self.actor.log.lifecycle("weights.caught_up", member=ref.name, version=retained.version)

    def ready(self, notice: WeightsReady) -> None:
        """A member joined a new group (used to name the ones that did not, on failure)."""
        self._ready.setdefault(notice.group_id, set()).add(notice.name)

    # ------------------------------------------------------------------- the phases
    async def _deliver(
        self, slot: _Slot, version: int, buckets: list[BucketSpec], members: dict[str, ActorRef],
        take: Callable[[int, float], torch.Tensor], device: torch.device,
    ) -> _Outcome:
        outcome = _Outcome()
        members = dict(members)
        # announce, re-forming the group once without whoever fails it
        for round_ in range(1, self.ANNOUNCE_ROUNDS + 1):
            spec, new_group = await self._group_spec(slot, members, device)
            failures = await self._ask_all(
                members, lambda i, spec=spec: WeightsAnnounce(version, dataclasses.replace(spec, rank=i), buckets),
                self.config.announce_timeout_s,
            )
            if not failures:
                break
            slot.forget()
            self._drop(failures, version, outcome, "announce")
            for name in failures:
                members.pop(name)
            if not members:
                return outcome
            reason = f"re-forming the group without {', '.join(sorted(failures))}"
            answered = await self._abort(members, version, reason)
            if round_ == self.ANNOUNCE_ROUNDS:  # no more rounds: the others get the next version
                self._drop({name: f"{reason}; then it did not answer an abort" for name in members if name not in answered},
                           version, outcome, "announce")
                outcome.survivors = {name: members[name] for name in answered}
                return outcome
        # ready: a new group forms (every member and rank 0 join it)
        if new_group:
            try:
                store = await self._ensure_store()
                formed = await asyncio.wait_for(
                    groups.in_thread(groups.BroadcastGroup.create, spec, store, self._store_host, device, name="weights-form"),
                    self.config.ready_timeout_s,
                )
            except Exception as error:  # noqa: BLE001 - any failure to form is a member's fault, named below
                joined = self._ready.pop(spec.group_id, set())
                late = {name: f"did not join the broadcast group within {self.config.ready_timeout_s:g} s ({_short(error)})"
                        for name in members if name not in joined}
                return await self._fail_transfer(slot, version, members, outcome, late or {name: _short(error) for name in members})
            self._ready.pop(spec.group_id, None)
            slot.group, slot.key = formed, _key(members)
        assert slot.group is not None
        # transfer
        deadline = time.monotonic() + self.config.transfer_timeout_s
        try:
            await asyncio.wait_for(
                groups.in_thread(send_all, slot.group, len(buckets), take, deadline, name="weights-send"),
                self.config.transfer_timeout_s + 1.0,
            )
        except Exception as error:  # noqa: BLE001 - a member died or stalled; the survivors are found below
            failure = f"transfer failed: {_short(error)}"
        else:
            failure = None
        if failure is not None:  # out of the except block: the traceback holding the group is gone
            return await self._fail_transfer(slot, version, members, outcome, {}, failure)
        # commit
        replies: dict[str, Any] = {}
        failures = await self._ask_all(members, lambda i: WeightsCommit(version), self.config.commit_timeout_s, replies)
        for name, reply in replies.items():
            if isinstance(reply, WeightsLoaded) and reply.version == version:
                outcome.committed[name] = reply
            elif name not in failures:
                failures[name] = f"acknowledged {reply!r} instead of version {version}"
        if failures:
            slot.forget()
            self._drop(failures, version, outcome, "commit")
        return outcome

    async def _fail_transfer(
        self, slot: _Slot, version: int, members: dict[str, ActorRef], outcome: _Outcome, known: dict[str, str], reason: str = "",
    ) -> _Outcome:
        """The group is broken: drop it, abort everyone, and keep those who answer."""
        slot.forget()
        reason = reason or "; ".join(f"{name} {why}" for name, why in sorted(known.items()))
        alive = {name: ref for name, ref in members.items() if name not in known}
        answered = await self._abort(alive, version, reason)
        failures = dict(known)
        for name in alive:
            if name not in answered:
                failures[name] = f"{reason}; then it did not answer an abort within {self.config.announce_timeout_s:g} s"
        self._drop(failures, version, outcome, "transfer")
        outcome.survivors = {name: members[name] for name in answered}
        return outcome

    async def _ask_all(
        self, members: dict[str, ActorRef], build: Callable[[int], Any], timeout: float, replies: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        """Ask every member at once (member i gets ``build(i)``, ranks from 1); failures by name."""
        names = sorted(members)
        results = await asyncio.gather(
            *(self.actor.ask(members[name], build(rank), timeout=timeout) for rank, name in enumerate(names, start=1)),
            return_exceptions=True,
        )
        failures = {}
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                failures[name] = _short(result)
            elif replies is not None:
                replies[name] = result
        return failures

    async def _abort(self, members: dict[str, ActorRef], version: int, reason: str) -> set[str]:
        replies: dict[str, Any] = {}
        await self._ask_all(members, lambda i: WeightsAbort(version, reason), self.config.announce_timeout_s, replies)
        return set(replies)

    def _drop(self, failures: dict[str, str], version: int, outcome: _Outcome, phase: str) -> None:
        """Take failed members out of the channel; tell each (without waiting) to join again."""
        for name, reason in failures.items():
            outcome.dropped[name] = f"{phase}: {reason}"
            ref = self.members.pop(name, None)
            self.actor.log.lifecycle("weights.dropped", member=name, version=version, phase=phase, reason=reason)
            if ref is not None:
                self.actor.start_background(self._tell_dropped(ref, version, f"{phase}: {reason}"), f"drop-{name}")

    async def _tell_dropped(self, ref: ActorRef, version: int, reason: str) -> None:
        try:
            await self.actor.tell(ref, WeightsAbort(version, reason, rejoin=True), timeout=self.config.announce_timeout_s)
        except ActorError:
            pass  # dead, or still stalled: it joins again when it restarts

    # -------------------------------------------------------------- groups and members
    async def _group_spec(self, slot: _Slot, members: dict[str, ActorRef], device: torch.device) -> tuple[GroupSpec, bool]:
        """The group for `members`: the slot's current one if they are its members, else a new one."""
        if slot.group is not None and slot.key == _key(members):
            return slot.group.spec, False
        slot.forget()
        store = await self._ensure_store()
        backend = groups.resolve_backend(self.config.backend, device)
        spec = GroupSpec(
            next(self._group_ids), self._store_host, store.port, 0, len(members) + 1, backend, self.config.transfer_timeout_s,
        )
        return spec, True

    def close(self) -> None:
        """Let the group and the store go (the trainer is stopping)."""
        self._main.forget()
        self._store = None
        self._retained = self._buffers = None

    async def _ensure_store(self) -> dist.TCPStore:
        if self._store is None:
            self._store_host = self.config.store_host or _host_of(self.actor.endpoint)
            self._store = await groups.in_thread(groups.start_store, self._store_host, self.config.ready_timeout_s)
        return self._store

    async def _live_members(self) -> dict[str, ActorRef]:
        """Joined generators still registered (a generator that left is dropped)."""
        membership = self.actor.membership
        if membership is not None and self.members:
            await membership.ensure_watching()
            live = {record.endpoint for record in membership.members()}
            for name, ref in list(self.members.items()):
                if ref.endpoint not in live:
                    del self.members[name]
                    self.actor.log.lifecycle("weights.member_left", member=name)
        return dict(self.members)

    def _reusable_buffers(self, buckets: list[BucketSpec], device: torch.device) -> list[torch.Tensor]:
        """The retained buffers, reused while the layout stays the same (no allocation per
        publication) and no catch-up is reading them."""
        stale = self._buffers is None or self._buffers[0] != buckets or self._buffers[2] != device
        if stale or id(self._buffers[1]) in self._catching_up:  # type: ignore[index]
            self._buffers = (buckets, [allocate(bucket, device) for bucket in buckets], device)
        return self._buffers[1]


def _key(members: dict[str, ActorRef]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, ref.endpoint) for name, ref in members.items()))


def _device_of(named: Sequence[tuple[str, torch.Tensor]]) -> torch.device:
    if not named:
        return torch.device("cpu")
    tensor = named[0][1]
    local = getattr(tensor, "to_local", None)
    return (local() if local is not None else tensor).device


def _host_of(endpoint: str | None) -> str:
    host = urlparse(endpoint or "").hostname or ""
    if not host or endpoint is None or endpoint.startswith("ipc://"):
        return "127.0.0.1"
    if host in ("0.0.0.0", "*"):
        return groups.local_address_towards("192.0.2.1")  # the interface of the default route
    return host


def _short(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    return text if len(text) <= 300 else text[:300] + "..."


# -------------------------------------------------------------------------- the mixin
class PublishesWeights(ChannelActor):
    """Base of trainer actors: handles `PublishWeights` on every rank, and on rank 0 the
    generators' `WeightsJoin` and `WeightsReady` (urgently: beside training).

    Subclasses set ``self.weights = WeightPublisher(self, rank, config)`` and implement
    `weights_model`.
    """

    weights: WeightPublisher

    def weights_model(self) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must say which model it publishes")

    @handler
    async def publish_weights(self, request: PublishWeights) -> PublishReport:
        return await self.weights.publish(self.weights_model(), republish=request.republish)

    @handler(urgent=True)
    async def _weights_join(self, request: WeightsJoin) -> WeightsJoined:
        return await self.weights.join(request)

    @handler(urgent=True)
    async def _weights_ready(self, notice: WeightsReady) -> None:
        self.weights.ready(notice)
