"""An actor that outlives its launcher: the stand-in for a role stuck where SIGTERM cannot reach it.

Role processes get SIGTERM when their launcher dies (`runtime.host.die_with_parent`,
Linux only), and stop. One that ignores SIGTERM (blocked in a native call, or on a
platform without parent-death signals) keeps running with no launcher to stop it:
what `troupe stop` must then find and end by itself.
"""

from __future__ import annotations

import asyncio
import signal

from runtime.actor import Actor


class IgnoresSigterm(Actor):
    """Serves like any actor, but only SIGKILL ends its process."""

    role = "stubborn"

    async def on_start(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)  # runtime.host's graceful stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
