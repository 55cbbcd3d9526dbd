"""`Client`: ask and tell from code that is not an actor (a CLI, a test, a notebook).

    async with Client("cli", registry=registry_endpoint) as client:
        records = (await client.ask("registry", Lookup(role="trainer"))).records

A client has no mailbox: it cannot be asked, only ask. Its message events go to
``logs/<name>.jsonl`` when a run directory is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import ActorError
from runtime.membership import Directory
from runtime.msglog import MessageLog
from runtime.outbox import ActorRef, Outbox, Target
from runtime.run_dir import RunDir
from runtime.security import load_keys
from runtime.settings import RuntimeSettings
from runtime.shm.exchange import SharedMemory
from runtime.tasks import TaskSet


class Client:
    """An outbox for code that is not an actor, used as an async context manager."""

    def __init__(
        self,
        name: str = "client",
        *,
        registry: str | None = None,
        settings: RuntimeSettings | None = None,
        run: str = "",
        run_dir: Path | str | None = None,
    ) -> None:
        self.name = name
        self.run_name = run
        self.settings = settings or RuntimeSettings()
        self.registry = ActorRef("registry", registry) if registry is not None else None
        log_path = RunDir(run_dir).message_log(name) if run_dir is not None else None
        self.log = MessageLog(log_path, run, name, "client", enabled=self.settings.log_messages)
        self._outbox: Outbox | None = None
        self._shared_memory: SharedMemory | None = None
        self._fault: BaseException | None = None
        self._tasks = TaskSet()
        """The client's own tasks (its log flushing), cancelled and awaited when it closes."""

    async def __aenter__(self) -> Client:
        names = Directory(self.ask, self.registry) if self.registry is not None else None
        self._shared_memory = SharedMemory(self.settings, self.run_name)
        self._outbox = Outbox(
            self.name, self.settings, self.log, self._broken, names, load_keys(self.settings), self._shared_memory
        )
        self._tasks.start(self.log.flush_periodically(self.settings.log_flush_interval_s), f"{self.name}-log")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._tasks.close()
        if self._outbox is not None:
            self._outbox.close()
        if self._shared_memory is not None:
            await self._shared_memory.close(self.settings.stop_linger_s)
        self.log.close()

    async def ask(self, target: Target, msg: Any, timeout: float | None = None, message_id: str | None = None) -> Any:
        return await self._require().ask(target, msg, timeout, message_id)

    async def tell(self, target: Target, msg: Any, timeout: float | None = None) -> None:
        await self._require().tell(target, msg, timeout)

    def _require(self) -> Outbox:
        if self._fault is not None:
            raise ActorError(f"client {self.name} is broken") from self._fault
        if self._outbox is None:
            raise RuntimeError("use the client inside `async with Client(...) as client:`")
        return self._outbox

    def _broken(self, error: BaseException) -> None:
        """A socket of the client failed: fail every pending ask, refuse further use."""
        self._fault = error
        if self._outbox is not None:
            for link in self._outbox.links.values():
                link.fail_pending(ActorError(f"client {self.name} failed: {error!r}"))
