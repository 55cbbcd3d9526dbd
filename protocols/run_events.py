"""Messages between a client of a run (the Python `Run`, `troupe` commands built on it)
and the run's controller: the client subscribes, the controller sends it every metrics
record it writes, then says when the run's steps are done.

A subscription may ask to *hold* the run: after its last step the controller keeps every
role up until each holding subscriber has sent `Release` or has gone (deregistered or
timed out in the registry), at most its ``hold_timeout_s``, so a client's own evaluators
can still ask the generator and reward roles.

A subscriber that joins late misses nothing: the reply to `Subscribe` carries every
record the controller has written so far in this session, and whether the steps are
done already; each later record comes as a `StepMetrics` message.
"""

from __future__ import annotations

from typing import Any

from protocols.messages import message


@message("run.subscribe")
class Subscribe:  # client -> controller: send me every metrics record from now on
    subscriber: str
    """The client's name in the registry (where the records go, and how the controller
    tells that it is gone)."""
    hold: bool = False
    """Keep the roles up after the last step until this client sends `Release` (or is gone)."""


@message("run.subscribed")
class Subscribed:  # controller -> client: the reply to Subscribe
    records: list[dict[str, Any]]
    """Every record the controller wrote in this session so far, oldest first (as in
    metrics.jsonl: ``{"step": n, "train/reward": ..., ...}``)."""
    evaluations: list[bool]
    """For each of `records`: whether it is an evaluation's record (else a training step's)."""
    steps: int
    """The training steps the run is configured for."""
    done: bool
    """The run's steps (and its last evaluation) are done already."""


@message("run.step_metrics")
class StepMetrics:  # controller -> client: one record, as just written to metrics.jsonl
    step: int
    metrics: dict[str, Any]
    """The record itself, ``step`` included."""
    evaluation: bool = False
    """An evaluation's record (``eval/...``) rather than a training step's (``train/...``)."""


@message("run.steps_done")
class StepsDone:  # controller -> client: the last step and the last evaluation are written
    steps: int
    """Training steps done."""


@message("run.release")
class Release:  # client -> controller: this client no longer holds the run
    subscriber: str
