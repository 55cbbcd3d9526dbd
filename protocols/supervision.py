"""Messages between the `troupe` commands and a run's supervisor (in the launcher process)."""

from __future__ import annotations

from protocols.messages import message


@message("supervision.instance_status")
class InstanceStatus:  # supervisor -> troupe ps
    name: str
    role: str
    instance: int
    pid: int | None
    state: str
    """``starting``, ``running``, ``restarting``, ``stopping``, ``stopped``, ``exited`` (code 0)
    or ``failed``."""
    restarts: int
    exit_code: int | None
    started_at: float
    """Unix time the current process started (0 before it has)."""
    attached: bool = False
    """Started by `troupe attach` rather than by the launch."""


@message("supervision.status_query")
class StatusQuery:  # troupe ps -> supervisor
    pass


@message("supervision.run_status")
class RunStatus:  # supervisor -> troupe ps
    run: str
    state: str
    """``starting``, ``running``, ``stopping``, ``finished`` or ``failed``."""
    instances: list[InstanceStatus]
    failure: str = ""


@message("supervision.stop_run")
class StopRun:  # troupe stop -> supervisor: stop every role in order, then the launcher exits
    reason: str = "troupe stop"


@message("supervision.stop_instance")
class StopInstance:  # troupe stop -> supervisor: stop one instance for good (its work is re-delivered)
    name: str


@message("supervision.attach")
class Attach:  # troupe attach -> supervisor: start `count` more instances of `role`
    role: str
    count: int = 1
    overrides: list[str] | None = None
    """``key=value`` overrides of the role's config block (as with --set, relative to ``config``)."""

    MAX_COUNT = 64
    """Instances one attach may start (a larger request is refused, not half done)."""

    def __post_init__(self) -> None:
        if not 1 <= self.count <= self.MAX_COUNT:
            raise ValueError(f"count must be between 1 and {self.MAX_COUNT}, got {self.count}")


@message("supervision.attached")
class Attached:  # supervisor -> troupe attach: the new instances, registered and ready
    names: list[str]
