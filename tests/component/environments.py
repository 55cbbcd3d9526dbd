"""Environments for the environment-role tests (imported by the role processes they spawn)."""

from __future__ import annotations

import asyncio
import time

from roles.agents.environments import Action, CalculatorEnvironment, Observation


class Stalling(CalculatorEnvironment):
    """Its step never returns in time: a plain function stuck on its thread."""

    def step(self, action: Action) -> Observation:
        time.sleep(60)
        return super().step(action)


class Waiting(CalculatorEnvironment):
    """The calculator, but a row with ``wait`` answers after that many seconds: an episode
    in flight when its process is killed."""

    async def step(self, action: Action) -> Observation:  # type: ignore[override]
        await asyncio.sleep(float(self.row.get("wait", 0.0)))
        return super().step(action)
