"""The trainer side of the weight channel.

Every trainer rank calls `WeightPublisher.publish(model)` for each publication (the
controller sends `PublishWeights` to all of them). Each rank walks the model's
tensors in the same order and gathers FSDP2 shards to full tensors one at a time on
its compute thread, so every rank takes part in every gather and the gathers run in
the same order everywhere. Rank 0 packs the full tensors into per-dtype buckets and a
sender thread broadcasts each piece of a bucket as soon as it is packed, on the
broadcast group (never the FSDP group), while packing goes on.

With ``delta``, a version travels as a sparse delta of the previous one when every
generator of the publication is known to hold that one (it acknowledged it, or was
caught up to it): the publisher keeps, per member, the version it last confirmed, and
forgets it whenever a delivery to that member does not end in its acknowledgement.
Catch-ups and retries always send the full version.

Rank 0 runs the phases against the generators that joined (`WeightsJoin`):
announce -> ready (a new group forms only when the members changed) -> transfer ->
commit, each under its deadline from `WeightChannelConfig`. A generator that fails a
phase is dropped from the channel and told so; when a transfer fails, the survivors
are caught up from the retained buckets in a new group. `publish` therefore always
returns, within `WeightPublisher.deadline_s`.

This module holds the publication and the joining of generators; the phases of one
delivery are in runtime.weights.phases, gathering and packing in
runtime.weights.packing (whose names are importable from here as before).
"""

from __future__ import annotations

import asyncio
import time

import torch

from protocols.weights import BucketSpec, PieceSpec, PublishReport, PublishWeights, WeightsJoin, WeightsJoined, WeightsReady
from runtime.actor import Actor, handler
from runtime.errors import ActorError
from runtime.outbox import ActorRef
from runtime.tasks import TaskSet
from runtime.weights.actor import ChannelActor
from runtime.weights.config import WeightChannelConfig
from runtime.weights.layout import parse_dtype, plan_buckets, plan_pieces, total_bytes
from runtime.weights.packing import (
    BucketStream,
    NameMap,
    WeightsError,
    device_of,
    gather,
    named_tensors,
    pack,
    send_all,
    tensor_metas,
)
from runtime.weights.phases import Outcome, Phases, Slot
from runtime.weights.retention import Plan, Retained, Retention

__all__ = [
    "BucketStream", "NameMap", "PublishesWeights", "WeightPublisher", "WeightsError",
    "gather", "named_tensors", "pack", "publish_metrics", "send_all", "tensor_metas",
]


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
        self._phases = Phases(actor, self.config, self.members)
        self._main = Slot()
        self._retention = Retention(self.config.keep_last, self.config.delta, self.config.send_in_place)
        self._held: dict[str, int] = {}
        """Member -> the version it confirmed holding (the base a delta may patch)."""

    ANNOUNCE_ROUNDS = Phases.ANNOUNCE_ROUNDS

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
            send_dtype = parse_dtype(self.config.send_dtype) if self.config.send_dtype else None
            metas = tensor_metas(named, send_dtype)
            buckets = plan_buckets(metas, int(self.config.bucket_mb * (1 << 20)))
            pieces = plan_pieces(metas, buckets, int(self.config.chunk_mb * (1 << 20)))
            device = device_of(named)
            nbytes = total_bytes(buckets)
            if self.rank != 0:
                gather_s, _ = await self.actor.compute.run(pack, named, buckets, None, None, device)
                self.version = version
                return PublishReport(version, self.rank, [], {}, [], nbytes, len(buckets), gather_s, time.monotonic() - started)
            try:
                members = await self._live_members()
            except ActorError as error:  # the registry is unreachable: still gather, the other ranks wait on us
                self.actor.log.lifecycle("weights.members_unknown", error=str(error))
                members = {}
            plan = self._retention.plan(model, self.name_map, buckets, device, self.version) if self._retention.retains else None
            delta_base = self._delta_base(plan, members, republish)
            if plan is not None and delta_base is not None:
                self._retention.patching(plan)
            buffers = plan.buffers if plan is not None else None
            stream = BucketStream(None if buffers is not None else _capacity(buckets, pieces)) if members else None
            # Packing always runs to its end (the other ranks' gathers wait on ours), and
            # never outlives publish: if the wait for it is cancelled, so is it.
            async with TaskSet() as packing_tasks:
                packing = packing_tasks.start(self.actor.compute.run(
                    pack, named, buckets, buffers, stream, device, pieces, delta_base is not None,
                    plan.previous if plan is not None and delta_base is not None else None,
                    plan.in_place if plan is not None else None,
                ))
                outcome = Outcome()
                try:
                    if members:
                        assert stream is not None
                        outcome = await self._phases.deliver(
                            self._main, version, buckets, pieces, members, stream.take, device, delta_base,
                        )
                finally:
                    if stream is not None:
                        stream.close()
                    gather_s, copied = await packing
            retried = False
            if outcome.survivors and self.config.keep_last and plan is not None:
                retried = True
                again = await self._phases.deliver(
                    self._main, version, buckets, pieces, outcome.survivors, self._retention.live(version, pieces).take, device,
                )
                outcome.committed.update(again.committed)
                outcome.dropped.update(again.dropped)
                outcome.survivors = again.survivors
                outcome.sent.sent_bytes += again.sent.sent_bytes
            if plan is not None:
                self._retention.published(plan, version, pieces, delta_base is not None, self.actor.compute)
            self._remember(members, outcome, version)
            self.version = version
            report = PublishReport(
                version, 0, sorted(outcome.committed), outcome.dropped, sorted(outcome.survivors), nbytes, len(buckets),
                gather_s, time.monotonic() - started, max((loaded.load_s for loaded in outcome.committed.values()), default=0.0),
                retried, outcome.sent.sent_bytes, outcome.sent.delta_bytes / nbytes if nbytes else 0.0,
            )
            self.actor.log.lifecycle(
                "weights.published", version=version, committed=report.committed, dropped=report.dropped,
                missed=report.missed, nbytes=nbytes, buckets=len(buckets), total_s=round(report.total_s, 4), retried=retried,
                sent_bytes=report.sent_bytes, delta_base=delta_base, delta_share=round(report.delta_share, 4), copied=copied,
            )
            return report

    def _delta_base(self, plan: Plan | None, members: dict[str, ActorRef], republish: bool) -> int | None:
        """The version this publication can be a delta of: the last published, if trainer
        rank 0 still holds its exact bytes and every member confirmed holding it."""
        base = plan.base if plan is not None else None
        if republish or base is None or base != self.version or not members:
            return None
        return base if all(self._held.get(name) == base for name in members) else None

    def _remember(self, members: dict[str, ActorRef], outcome: Outcome, version: int) -> None:
        """Who now holds `version`; a member the delivery did not confirm holds nothing known."""
        for name in members:
            if name in outcome.committed:
                self._held[name] = version
            else:
                self._held.pop(name, None)
        for name in list(self._held):
            if name not in self.members:
                del self._held[name]

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
            self._held.pop(request.name, None)
        caught_up: int | None = None
        for _ in range(3):
            async with self._lock:
                retained = self._retention.retained
                if retained is None or retained.version == caught_up:
                    self.members[request.name] = ref
                    if caught_up is not None:
                        self._held[request.name] = caught_up
                    return WeightsJoined(version=caught_up, current=self.version)
                self._retention.hold(retained.buffers)  # no publication writes into them meanwhile
            try:
                if retained.ready is not None:
                    await retained.ready  # the snapshot copy, queued on the compute thread
                await self._catch_up(ref, retained)
            finally:
                self._retention.release(retained.buffers)
            caught_up = retained.version
        raise WeightsError(f"{request.name} could not be caught up: a newer version was published during each of 3 catch-ups")

    async def _catch_up(self, ref: ActorRef, retained: Retained) -> None:
        slot = Slot()
        try:
            outcome = await self._phases.deliver(
                slot, retained.version, retained.buckets, retained.pieces, {ref.name: ref}, retained.take, retained.device,
            )
        finally:
            slot.forget()
        if ref.name not in outcome.committed:
            reason = outcome.dropped.get(ref.name, "the transfer failed")
            raise WeightsError(f"catching {ref.name} up to version {retained.version} failed: {reason}")
        self.actor.log.lifecycle("weights.caught_up", member=ref.name, version=retained.version)

    def ready(self, notice: WeightsReady) -> None:
        """A member joined a new group (used to name the ones that did not, on failure)."""
        self._phases.ready(notice)

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

    def close(self) -> None:
        """Let the group and the store go (the trainer is stopping)."""
        self._main.forget()
        self._phases.close()
        self._retention.clear()
        self._held.clear()


def _capacity(buckets: list[BucketSpec], pieces: list[PieceSpec]) -> int:
    """Pieces the packer may have waiting when it packs into fresh buckets: about two
    buckets' worth (double buffering), whatever the piece size."""
    per_bucket = [0] * len(buckets)
    for piece in pieces:
        per_bucket[piece.bucket] += 1
    return max(2, 2 * max(per_bucket, default=1))


def publish_metrics(report: PublishReport) -> dict[str, float]:
    """A publication's numbers under their metric names (``weights/<name>``)."""
    return {
        "weights/version": float(report.version),
        "weights/sync_s": report.total_s,
        "weights/generators": float(len(report.committed)),
        "weights/sent_bytes": float(report.sent_bytes),
        "weights/delta_share": report.delta_share,
        "weights/pause_s": report.pause_s,
    }


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
