"""Credit-based flow control between one sender and one receiver.

A sender may have at most `window_messages` messages and `window_bytes` bytes in
flight to a receiver: sent, but not yet handled there. Each message spends credit
before it is sent; the receiver returns the credit when it has handled the message
(in the header of the reply to an ask, or in a `troupe.credit` message after a
batch of tells). A sender that runs out waits, so a slow consumer slows its
producers and neither side's memory grows with the backlog.

One message larger than `window_bytes` may still go when nothing else is in
flight, so large batches never deadlock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from runtime._compat import timeout as deadline


class SendWindow:
    """The sender's side: how much credit it has spent towards one receiver."""

    def __init__(self, window_messages: int, window_bytes: int) -> None:
        self.window_messages = window_messages
        self.window_bytes = window_bytes
        self.messages = 0
        self.bytes = 0
        self._returned = asyncio.Event()
        self._broken: Exception | None = None

    def has_room(self, nbytes: int) -> bool:
        if self.messages >= self.window_messages:
            return False
        return self.messages == 0 or self.bytes + nbytes <= self.window_bytes

    def try_acquire(self, nbytes: int) -> bool:
        """Spend credit for one message of `nbytes` if there is room now."""
        if not self.has_room(nbytes):
            return False
        self.messages += 1
        self.bytes += nbytes
        return True

    async def acquire(self, nbytes: int, timeout: float) -> None:
        """Spend credit for one message of `nbytes`, waiting up to `timeout` seconds.

        Raises:
            TimeoutError: no credit came back in time.
            Exception: the error given to `break_with`, once the receiver is gone.
        """
        if self._broken is None and self.try_acquire(nbytes):
            return
        async with deadline(timeout):
            while self._broken is None and not self.has_room(nbytes):
                self._returned.clear()
                await self._returned.wait()
        if self._broken is not None:
            raise self._broken
        self.messages += 1
        self.bytes += nbytes

    def release(self, messages: int, nbytes: int) -> None:
        """Credit came back (or a message was never delivered)."""
        self.messages = max(0, self.messages - messages)
        self.bytes = max(0, self.bytes - nbytes)
        self._returned.set()

    def break_with(self, error: Exception) -> None:
        """The receiver is gone for good: every wait for credit fails with `error`."""
        self._broken = error
        self._returned.set()

    def reset(self) -> None:
        """The receiver is gone: everything in flight is lost, all credit is back."""
        self.release(self.messages, self.bytes)


@dataclass
class CreditOwed:
    """The receiver's side, per sender: what it holds and what it owes back."""

    held_messages: int = 0
    """Messages from this sender in the mailbox or being handled."""
    owed_messages: int = 0
    owed_bytes: int = 0
    """Credit for handled messages not yet returned."""

    def take(self) -> tuple[int, int]:
        """Return and clear the credit owed."""
        owed = (self.owed_messages, self.owed_bytes)
        self.owed_messages = self.owed_bytes = 0
        return owed
