"""The base both channel mixins share: an actor holding a weight-channel side."""

from __future__ import annotations

from typing import Any

from runtime.actor import Actor


class ChannelActor(Actor):
    """Lets its channel side (``self.weights``) close its group and store on stop."""

    weights: Any

    async def on_stop(self) -> None:
        weights = getattr(self, "weights", None)
        if weights is not None:
            weights.close()
        await super().on_stop()
