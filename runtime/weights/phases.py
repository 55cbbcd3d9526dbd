"""The phases that carry one version to a set of generators, run by trainer rank 0.

announce (version, group spec, bucket layout, pieces) -> ready (a new broadcast group
forms, only when the members changed) -> transfer (the pieces, broadcast in order) ->
commit (every member loads the version and acknowledges it), each under its
deadline from `WeightChannelConfig`. The commits are asked as the transfer starts: a
member answers once it has received and loaded every piece, so the acknowledgement
costs no round trip after the last piece (its deadline is the transfer's plus the
commit's).

A member that fails the announcement is left out and the group is re-formed once
without it; a member that fails a later phase is dropped from the channel and told
so (it joins again by itself). When a transfer fails, the members still answering
are the `Outcome`'s survivors: the publisher retries them from the retained buckets.
What is sent comes from a ``take(index, deadline)`` function (runtime.weights.packing);
how it travels is runtime.weights.transfer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from protocols.weights import (
    BucketSpec,
    GroupSpec,
    PieceSpec,
    WeightsAbort,
    WeightsAnnounce,
    WeightsCommit,
    WeightsLoaded,
    WeightsReady,
)
from runtime.actor import Actor
from runtime.errors import ActorError
from runtime.outbox import ActorRef
from runtime.tasks import TaskSet
from runtime.weights import group as groups
from runtime.weights.config import WeightChannelConfig
from runtime.weights.transfer import SendStats, Take, send_pieces

if TYPE_CHECKING:
    import torch.distributed as dist


@dataclass
class Slot:
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
class Outcome:
    committed: dict[str, WeightsLoaded] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    survivors: dict[str, ActorRef] = field(default_factory=dict)
    """Members that are alive but did not get the version (the transfer failed)."""
    sent: SendStats = field(default_factory=SendStats)
    """What the transfer broadcast (as far as it got)."""


class Phases:
    """Runs the phases for trainer rank 0, one delivery at a time per `Slot`.

    Args:
        actor: the trainer actor (asks and tells go out through it).
        config: deadlines, backend, store address.
        members: the channel's members (joined generators); a member dropped in a
            phase is removed from it.
    """

    ANNOUNCE_ROUNDS = 2
    """Announce rounds per delivery: after the first failures the group is re-formed once;
    members failing the second round are dropped and the rest catch up next time."""

    def __init__(self, actor: Actor, config: WeightChannelConfig, members: dict[str, ActorRef]) -> None:
        self.actor = actor
        self.config = config
        self.members = members
        self._store: dist.TCPStore | None = None
        self._store_host = ""
        self._group_ids = itertools.count(1)
        self._ready: dict[int, set[str]] = {}

    def ready(self, notice: WeightsReady) -> None:
        """A member joined a new group (used to name the ones that did not, on failure)."""
        self._ready.setdefault(notice.group_id, set()).add(notice.name)

    def close(self) -> None:
        """Let the store go (the trainer is stopping)."""
        self._store = None

    async def deliver(
        self, slot: Slot, version: int, buckets: list[BucketSpec], pieces: list[PieceSpec], members: dict[str, ActorRef],
        take: Take, device: torch.device, delta_base: int | None = None,
    ) -> Outcome:
        """Carry `version` to `members` through every phase (as a delta of `delta_base`, which
        every member holds, unless None); never raises for a member's failure."""
        outcome = Outcome()
        members = dict(members)
        # announce, re-forming the group once without whoever fails it
        for round_ in range(1, self.ANNOUNCE_ROUNDS + 1):
            spec, new_group = await self._group_spec(slot, members, device)
            failures = await self._ask_all(
                members,
                lambda i, spec=spec: WeightsAnnounce(version, dataclasses.replace(spec, rank=i), buckets, pieces, delta_base),
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
        # transfer, with the commits already asked
        deadline = time.monotonic() + self.config.transfer_timeout_s
        replies: dict[str, Any] = {}
        async with TaskSet(on_error=lambda error: None) as tasks:  # a failed send reaches us through wait_for
            sending = tasks.start(groups.in_thread(send_pieces, slot.group, len(pieces), take, deadline, name="weights-send"))
            committing = tasks.start(self._ask_all(  # started second: the sending thread starts first
                members, lambda i: WeightsCommit(version), self.config.transfer_timeout_s + self.config.commit_timeout_s, replies,
            ))
            try:
                outcome.sent = await asyncio.wait_for(sending, self.config.transfer_timeout_s + 1.0)
            except Exception as error:  # noqa: BLE001 - a member died or stalled; the survivors are found below
                failure = f"transfer failed: {_short(error)}"
            else:
                failure = None
                failures = await committing
            # leaving the block cancels the commits of a failed transfer: the aborts below settle them
        if failure is not None:  # out of the except block: the traceback holding the group is gone
            return await self._fail_transfer(slot, version, members, outcome, {}, failure)
        # commit
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
        self, slot: Slot, version: int, members: dict[str, ActorRef], outcome: Outcome, known: dict[str, str], reason: str = "",
    ) -> Outcome:
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

    def _drop(self, failures: dict[str, str], version: int, outcome: Outcome, phase: str) -> None:
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

    async def _group_spec(self, slot: Slot, members: dict[str, ActorRef], device: torch.device) -> tuple[GroupSpec, bool]:
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

    async def _ensure_store(self) -> dist.TCPStore:
        """The rendezvous store of the broadcast groups, opened on first use on the address
        trainer rank 0 is bound to (the one the registry hands out for its endpoint, so
        every generator that reaches the trainer reaches the store), unless `store_host` says."""
        if self._store is None:
            self._store_host = self.config.store_host or groups.bound_host(self.actor.endpoint)
            self._store = await groups.in_thread(groups.start_store, self._store_host, self.config.ready_timeout_s)
            self.actor.log.lifecycle("weights.store_opened", address=f"tcp://{self._store_host}:{self._store.port}")
        return self._store


def _key(members: dict[str, ActorRef]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, ref.endpoint) for name, ref in members.items()))


def _short(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    return text if len(text) <= 300 else text[:300] + "..."
