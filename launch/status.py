"""What a running launch shows: a live table on a terminal, plain lines otherwise, and
the run's health alerts as they appear (`HealthWatch`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from roles.evaluation.health import Alert, HealthThresholds, check_health
from roles.evaluation.trends import series_from_records
from runtime.run_dir import RunDir

if TYPE_CHECKING:
    from launch.supervisor import Supervisor
    from runtime.registry import Registry


def uptime(started_at: float) -> str:
    if not started_at:
        return "-"
    seconds = int(time.time() - started_at)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def instances_table(supervisor: Supervisor, registry: Registry) -> Table:
    """One row per instance: what the supervisor knows (pid, restarts, uptime) joined with
    what the instance registered (the host it runs on, its state, its message counts)."""
    table = Table(title=f"run {supervisor.topology.name}: {supervisor.state}", title_justify="left")
    for column in ("instance", "role", "host", "pid", "state", "restarts", "uptime", "msgs in", "msgs out"):
        table.add_column(column, justify="right" if column in ("pid", "restarts", "msgs in", "msgs out") else "left")
    for instance in supervisor.instances.values():
        record = registry.records.get(instance.name)
        status = instance.status()
        table.add_row(
            instance.name, instance.role, record.host if record is not None else "-", str(status.pid or "-"),
            (record.state if record is not None and instance.state == "running" else instance.state),
            str(instance.restarts), uptime(instance.started_at),
            str(record.messages_in if record else "-"), str(record.messages_out if record else "-"),
        )
    return table


class StatusView:
    """Shows the run: a live table when stdout is a terminal, timestamped lines otherwise."""

    def __init__(self, live: bool | None = None) -> None:
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self.console = Console()
        self._live: Live | None = None

    def notify(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")
        else:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def start(self, supervisor: Supervisor, registry: Registry) -> None:
        if self.live_enabled:
            self._live = Live(instances_table(supervisor, registry), console=self.console, refresh_per_second=2)
            self._live.start()

    def refresh(self, supervisor: Supervisor, registry: Registry) -> None:
        if self._live is not None:
            self._live.update(instances_table(supervisor, registry))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class HealthWatch:
    """The run's health alerts as it goes: every `interval_s` reads the lines added to
    metrics.jsonl, runs roles.evaluation.health on everything so far, and returns the
    alerts not reported before (an alert is known by its kind and first step, so one
    that goes on is reported once)."""

    def __init__(self, run_dir: Path, interval_s: float = 5.0, thresholds: HealthThresholds | None = None) -> None:
        self.path = RunDir(run_dir).metrics
        self.interval_s = interval_s
        self.thresholds = thresholds or HealthThresholds()
        self.records: list[dict[str, Any]] = []
        self.offset = 0
        self.reported: set[tuple[str, int]] = set()
        self.next_check = 0.0

    def poll(self) -> list[Alert]:
        now = time.monotonic()
        if now < self.next_check or not self.path.exists():
            return []
        self.next_check = now + self.interval_s
        with open(self.path, "rb") as metrics:
            metrics.seek(self.offset)
            added = metrics.read()
        complete = added[: added.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if not complete:
            return []
        fresh = []
        for alert in check_health(series_from_records(self.records), self.thresholds):
            if (alert.kind, alert.first_step) not in self.reported:
                self.reported.add((alert.kind, alert.first_step))
                fresh.append(alert)
        return fresh
