"""Work for a role: pick a live instance, and re-deliver when it dies.

`RoleRouter.ask(role, message)` sends `message` to a ready instance of `role`
(the one this actor has the fewest asks pending with; among equals, the one it
has sent the least so far, so work spreads evenly) and waits for the reply.
If that instance dies before answering (ActorDeadError: its process stopped or
was killed, or the registry says it left), the same message, with the same
message id, goes to another live instance; with none alive it waits, until its
deadline, for one to join (a restarted instance, or one attached at runtime).
Receivers are idempotent by message id (runtime.dedup), and whatever the first
instance sent while handling it carries the same derived ids the second will
use, so re-delivered work is neither lost nor done twice downstream.

The router follows the registry's membership events: an instance that joins is
routable as soon as it reports ``ready``, without a restart of anyone.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from protocols.membership import ActorRecord
from runtime.errors import ActorDeadError, DeadlineExceeded
from runtime.membership import Ask, Membership
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef
from runtime.tracing import message_id_for_send


class RoleRouter:
    """Routes asks to the live instances of a role, for one actor.

    Args:
        ask: an ``ask(target, message, timeout=None, message_id=None)`` coroutine function (the actor's).
        membership: the actor's membership, which says who is registered and ready.
        log: where ``work.redelivered`` events go.
        default_timeout_s: the deadline of an ask that gives none.
    """

    def __init__(self, ask: Ask, membership: Membership, log: MessageLog, default_timeout_s: float) -> None:
        self._ask = ask
        self.membership = membership
        self.log = log
        self.default_timeout_s = default_timeout_s
        self.in_flight: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.redeliveries = 0

    def ready_instances(self, role: str) -> list[ActorRecord]:
        return sorted(
            (record for record in self.membership.members(role=role) if record.state == "ready"),
            key=lambda record: record.name,
        )

    async def ask(self, role: str, message: Any, timeout: float | None = None) -> Any:
        """Ask some live instance of `role`; re-deliver to another if it dies.

        Raises:
            DeadlineExceeded: no instance answered before the deadline (none alive,
                or all too slow).
            RemoteError: the handler raised (not retried: the failure is the answer).
        """
        await self.membership.ensure_watching()
        timeout = self.default_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        message_id = message_id_for_send()
        dead: set[str] = set()
        while True:
            remaining = deadline - time.monotonic()
            candidates = [r for r in self.ready_instances(role) if r.endpoint not in dead]
            if not candidates:
                if remaining <= 0 or not await self.membership.wait_for_change(remaining):
                    raise DeadlineExceeded(f"no live instance of role {role!r} answered within {timeout:g} s")
                continue
            target = min(
                candidates, key=lambda r: (self.in_flight[r.endpoint], self.sent[r.endpoint], r.name)
            )
            self.in_flight[target.endpoint] += 1
            self.sent[target.endpoint] += 1
            try:
                return await self._ask(
                    ActorRef(target.name, target.endpoint), message, timeout=remaining, message_id=message_id
                )
            except ActorDeadError as error:
                dead.add(target.endpoint)
                self.redeliveries += 1
                self.log.lifecycle(
                    "work.redelivered", role=role, message_id=message_id, dead=target.name, error=str(error)
                )
            finally:
                self.in_flight[target.endpoint] -= 1
                if not self.in_flight[target.endpoint]:
                    del self.in_flight[target.endpoint]
