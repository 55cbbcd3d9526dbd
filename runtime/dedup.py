"""Handlers idempotent by message id.

A message can arrive twice: its sender re-delivers it when the instance it first
went to died, and messages sent while handling a re-delivered message carry the
same (derived) ids as the first time. The `Deduplicator` remembers the ids an
actor has handled, with the reply it gave: a repeat of a handled ask gets the same
reply without running the handler again, a repeat of a handled tell is dropped,
and a repeat arriving while the first is still being handled waits for its
outcome. Failures are not remembered: a failed message may be retried.

Memory is bounded: the oldest ids are forgotten beyond `capacity`. The memory
lives in the actor's process; an actor that must survive its own restart
without repeating work keeps what it has done in its own state.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

_UNSET = object()


class Deduplicator:
    """Remembers recently handled message ids and their replies."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._running: dict[str, asyncio.Future[Any] | None] = {}
        """Ids being handled, with the future a repeat waits on (made when a repeat comes)."""
        self.duplicates = 0

    def seen(self, message_id: str) -> bool:
        """Whether `message_id` was handled already or is being handled."""
        return message_id in self._done or message_id in self._running

    def handled_reply(self, message_id: str) -> Any:
        """The reply remembered for `message_id` (None for a tell), or `UNSET` if not handled."""
        return self._done.get(message_id, _UNSET)

    def running(self, message_id: str) -> asyncio.Future[Any] | None:
        """The outcome of the same message still being handled, if it is."""
        if message_id not in self._running:
            return None
        waiter = self._running[message_id]
        if waiter is None:
            waiter = self._running[message_id] = asyncio.get_running_loop().create_future()
        return waiter

    def start(self, message_id: str) -> None:
        self._running[message_id] = None

    def succeed(self, message_id: str, reply: Any) -> None:
        self._done[message_id] = reply
        if len(self._done) > self.capacity:
            self._done.popitem(last=False)
        waiter = self._running.pop(message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def fail(self, message_id: str, error: BaseException) -> None:
        waiter = self._running.pop(message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            waiter.exception()  # retrieved here: a duplicate may never have been waiting


UNSET = _UNSET
