"""The controller's side of checkpoints: saving a step, finding the one to resume from,
and restoring the roles from it.

What a checkpoint folder holds and when one is intact is roles.checkpoints' to say;
this module runs the protocol over the roles that keep state (every trainer rank, and
the critic for PPO with GAE), through one function the controller hands it
(`AskStatefulRoles`), so it needs no actor to be tested or read:

    save:    remove the marker -> SaveCheckpoint to the roles -> write the marker (last)
    resume:  the newest intact folder (a warning for each newer one skipped)
             -> LoadCheckpoint to the roles -> the controller's state from the marker
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from protocols.rl import CheckpointDone, LoadCheckpoint, SaveCheckpoint
from roles.checkpoints import (
    CheckpointError,
    newest_intact_checkpoint,
    read_marker,
    remove_marker,
    write_marker,
)
from runtime.run_dir import RunDir

AskStatefulRoles = Callable[[Any], Awaitable[list[Any]]]
"""Sends one checkpoint message to every role that keeps state and returns their
replies, trainer rank 0's first."""
Lifecycle = Callable[..., None]
"""Writes one lifecycle event to the controller's log (``event``, then fields)."""


async def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], ask: AskStatefulRoles) -> Path:
    """``checkpoints/step_<step>``: the roles write their files, then the marker with
    the controller's `state` (roles.checkpoints.CONTROLLER_KEYS) is written last."""
    path = RunDir(run_dir).checkpoint(step)
    path.mkdir(parents=True, exist_ok=True)
    remove_marker(path)  # a folder a stopped session left is incomplete until the roles have rewritten it
    await ask(SaveCheckpoint(str(path)))
    write_marker(path, state)  # last, atomically, with every file's size: the checkpoint is complete
    return path


class Restored(NamedTuple):
    """A checkpoint the roles have loaded."""

    path: Path
    state: dict[str, Any]
    """The controller's state at its step (roles.checkpoints.CONTROLLER_KEYS)."""
    trainer_version: int
    """The weights version trainer rank 0 had published when it saved."""


async def restore_newest(run_dir: Path, ask: AskStatefulRoles, lifecycle: Lifecycle) -> Restored | None:
    """Load the newest intact checkpoint into the roles; None when there is none to
    resume from (a fresh run, or only saves that were cut short).

    Raises:
        CheckpointError: checkpoints exist, finished ones among them, and none is intact;
            starting over silently would throw the run away, so the message says what
            to move aside.
    """
    path, skipped = newest_intact_checkpoint(run_dir)
    for damaged in skipped:
        lifecycle("controller.checkpoint_skipped", checkpoint=str(damaged.folder), problem=damaged.problem)
        print(f"troupe controller: warning: checkpoint {damaged}; resuming from an older one", file=sys.stderr, flush=True)
    if path is None:
        if any(damaged.finished for damaged in skipped):  # not just saves cut short: say so, do not start over
            raise CheckpointError(
                f"no intact checkpoint to resume from in {run_dir}/checkpoints: " + "; ".join(map(str, skipped))
                + ". Move the damaged folders away (all of checkpoints/ to start over), or set "
                "roles.controller.config.resume=false"
            )
        return None
    state = read_marker(path)
    loaded: CheckpointDone = (await ask(LoadCheckpoint(str(path))))[0]
    return Restored(path, state, loaded.version)
