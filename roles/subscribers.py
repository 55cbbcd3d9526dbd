"""The controller's bookkeeping of the clients subscribed to its run (protocols.run_events).

A client (the Python `Run`) subscribes by name; from then on every record the controller
writes to metrics.jsonl goes to it as a `StepMetrics` message, and `StepsDone` follows the
last one. The reply to `Subscribe` carries every record written so far in this controller
session, so a client that subscribes late, even after the last step, misses nothing.

At the end of the run (`finish`) the controller waits until every subscriber that asked to
hold the run has released it or is gone, at most `hold_timeout_s`: the Python API's
evaluators run against the live generator and reward roles after the last step. "Gone"
is the registry's word: a client that deregistered (it stopped) or stopped heartbeating
(it died) is no longer looked up, and a client a message cannot reach is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocols.run_events import Release, StepMetrics, StepsDone, Subscribe, Subscribed
from runtime.errors import ActorError

SEND_TIMEOUT_S = 10.0
"""How long a subscriber may take to acknowledge one message; one that takes longer is
dropped (it stopped reading), so a client never holds training up for long. Messages
are asked, not told: the acknowledgement says `StepsDone` arrived before the controller
stops and closes its sockets."""
CHECK_INTERVAL_S = 0.5
"""How often `finish` asks the registry whether the holding subscribers are still there."""


class Subscribers:
    """The subscribed clients of one controller and the records sent to them.

    Args:
        ask: the controller's ``ask(target, message, timeout=...)``.
        lookup: the controller's ``lookup(name=...)``: the registry's records of an actor.
        lifecycle: the controller's ``log.lifecycle(event, **fields)``.
        steps: the training steps the run is configured for.
    """

    def __init__(self, ask: Callable[..., Awaitable[Any]], lookup: Callable[..., Awaitable[list[Any]]],
                 lifecycle: Callable[..., None], steps: int) -> None:
        self.ask = ask
        self.lookup = lookup
        self.lifecycle = lifecycle
        self.steps = steps
        self.names: list[str] = []
        """Subscribers that get every record, in the order they subscribed."""
        self.holding: set[str] = set()
        """Subscribers the run waits for after its last step."""
        self.records: list[tuple[dict[str, Any], bool]] = []
        """Every record written in this session, with whether it is an evaluation's."""
        self.done = False

    def subscribe(self, request: Subscribe) -> Subscribed:
        """Add a subscriber (again: no harm); the reply holds everything written so far.

        Synchronous on purpose: no record can be written between the copy in the reply
        and the subscriber's joining the list, so it gets each record exactly once.
        """
        if request.subscriber not in self.names:
            self.names.append(request.subscriber)
        if request.hold:
            self.holding.add(request.subscriber)
        self.lifecycle("controller.subscribed", subscriber=request.subscriber, hold=request.hold, records=len(self.records))
        return Subscribed([record for record, _ in self.records], [evaluation for _, evaluation in self.records],
                          self.steps, self.done)

    def release(self, request: Release) -> None:
        """The subscriber no longer holds the run (it stays subscribed)."""
        self.holding.discard(request.subscriber)
        self.lifecycle("controller.released", subscriber=request.subscriber)

    async def publish(self, record: dict[str, Any], evaluation: bool = False) -> dict[str, Any]:
        """Send a record just written to metrics.jsonl to every subscriber; returns it."""
        self.records.append((record, evaluation))
        await self._send_to_all(StepMetrics(int(record["step"]), record, evaluation))
        return record

    async def finish(self, steps: int, hold_timeout_s: float) -> None:
        """Tell every subscriber the steps are done, then wait for the holding ones
        (released or gone), at most `hold_timeout_s` seconds."""
        self.done = True
        await self._send_to_all(StepsDone(steps))
        if not self.holding:
            return
        self.lifecycle("controller.held", subscribers=sorted(self.holding), timeout_s=hold_timeout_s)
        deadline = time.monotonic() + hold_timeout_s
        while self.holding:
            for name in sorted(self.holding):
                if not await self.lookup(name=name):
                    self._drop(name, "it left the registry")
            if not self.holding:
                break
            if time.monotonic() > deadline:
                self.lifecycle("controller.hold_expired", subscribers=sorted(self.holding), timeout_s=hold_timeout_s)
                return
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def _send_to_all(self, event: Any) -> None:
        names = list(self.names)
        outcomes = await asyncio.gather(*(self.ask(name, event, timeout=SEND_TIMEOUT_S) for name in names),
                                        return_exceptions=True)
        for name, outcome in zip(names, outcomes):
            # a subscriber that stopped or died must not stop the run: it is dropped
            if isinstance(outcome, ActorError):
                self._drop(name, f"{type(outcome).__name__}: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome

    def _drop(self, name: str, why: str) -> None:
        if name in self.names:
            self.names.remove(name)
        self.holding.discard(name)
        self.lifecycle("controller.subscriber_gone", subscriber=name, why=why)
