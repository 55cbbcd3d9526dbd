"""The actors of the runtime showcase: stages that transform tensor batches and a
sink that totals what it receives. See examples/showcase.py."""

from __future__ import annotations

import torch

from protocols.batch import Batch
from protocols.messages import message
from runtime.actor import Actor, handler


@message("showcase.work")
class Work:  # driver -> Stage: transform this batch, forward the result to the sink
    batch: Batch
    sink: str


@message("showcase.done")
class Done:  # Stage -> driver
    rows: int
    stage: str


@message("showcase.result")
class Result:  # Stage -> Sink (tell)
    batch: Batch


@message("showcase.totals_query")
class TotalsQuery:  # driver -> Sink
    pass


@message("showcase.totals")
class Totals:  # Sink -> driver
    rows: int
    total: float
    ids: list[int]


class Stage(Actor):
    """Squares and doubles a batch on its compute thread, then tells the sink."""

    role = "stage"

    @handler
    async def work(self, request: Work) -> Done:
        x = request.batch["x"]
        y = await self.compute.run(lambda: (x * x * 2.0).sum(dim=1))
        await self.tell(request.sink, Result(request.batch.without("x").with_columns(y=y)))
        return Done(rows=len(request.batch), stage=self.name)


class Sink(Actor):
    """Adds up every result it is told about, each row id once.

    A batch whose stage died may be sent again after the first copy already got
    here; skipping ids already seen makes the handler idempotent.
    """

    role = "sink"

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.rows = 0
        self.total = 0.0
        self.ids: set[int] = set()

    @handler
    async def result(self, message: Result) -> None:
        fresh = [row for row, id_ in enumerate(message.batch["id"]) if id_ not in self.ids]
        batch = message.batch.select(fresh)
        self.rows += len(batch)
        self.total += float(batch["y"].sum())
        self.ids.update(batch["id"])

    @handler
    async def totals(self, query: TotalsQuery) -> Totals:
        return Totals(self.rows, self.total, sorted(self.ids))


def expected_total(x: torch.Tensor) -> float:
    return float((x * x * 2.0).sum())
