"""A tour of the troupe runtime, end to end, on a CPU (what `make demo` runs until
the RL roles land).

It starts a registry and four actor processes (two stages, a sink, and this
driver), pushes tensor batches through them, kills a stage mid-run to show what
callers and watchers see, and reads the structured message logs back.

    python examples/showcase.py [--run-dir runs/showcase] [--batches 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from examples.showcase_actors import Done, Totals, TotalsQuery, Work, expected_total  # noqa: E402
from protocols.batch import Batch  # noqa: E402
from protocols.membership import MembershipEvent  # noqa: E402
from runtime.actor import Actor  # noqa: E402
from runtime.errors import ActorDeadError  # noqa: E402
from runtime.host import run_event_loop  # noqa: E402
from runtime.run_dir import RunDir  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402
from runtime.spawn import ActorProcess, spawn_actor  # noqa: E402

RUN = "showcase"
SETTINGS = RuntimeSettings(heartbeat_interval_s=0.25, heartbeat_timeout_s=1.5)
console = Console()


class Driver(Actor):
    """Sends the work and watches membership."""

    role = "driver"

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.events: list[MembershipEvent] = []
        self.dead: set[str] = set()

    async def on_membership(self, event: MembershipEvent) -> None:
        self.events.append(event)
        console.print(f"  [dim]membership:[/] {event.record.name} [bold]{event.event}[/]"
                      + (f" ({event.reason})" if event.reason else "") + f", epoch {event.epoch}")

    def live_stages(self) -> list[str]:
        assert self.membership is not None
        names = (record.name for record in self.membership.members(role="stage"))
        return sorted(name for name in names if name not in self.dead)


def make_batches(count: int, rows: int = 64, width: int = 256) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    return [
        Batch({"x": torch.randn(rows, width, generator=generator)}, {"id": list(range(i * rows, (i + 1) * rows))})
        for i in range(count)
    ]


async def process_all(driver: Driver, batches: list[Batch], kill: ActorProcess | None = None) -> int:
    """Send every batch to a live stage (at most 8 in flight); re-send those whose stage died.

    With `kill`, that stage's process is SIGKILLed once a quarter of the batches are done.
    Returns how many batches were re-sent.
    """
    todo = list(range(len(batches)))
    retried = completed = 0
    limit = asyncio.Semaphore(8)

    async def one(index: int) -> int | None:
        nonlocal completed, kill
        async with limit:
            stages = driver.live_stages()
            stage = stages[index % len(stages)]
            try:
                done: Done = await driver.ask(stage, Work(batches[index], "sink-0"), timeout=30)
            except ActorDeadError as error:
                console.print(f"  [yellow]batch {index}: {error}[/]")
                driver.dead.add(stage)
                return index
            completed += 1
            if kill is not None and completed >= len(batches) // 4:
                console.print(f"  [red]kill -9 {kill.name} (pid {kill.pid}) with work in flight[/]")
                kill.kill()
                kill = None
            return None if done.rows == len(batches[index]) else index

    while todo:
        failed = [index for index in await asyncio.gather(*(one(index) for index in todo)) if index is not None]
        retried += len(failed)
        todo = failed
    return retried


async def wait_until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


def message_stats(run_dir: Path) -> Table:
    """Per edge (sender role -> receiver role, kind): messages, bytes, handling time p50."""
    roles: dict[str, str] = {}
    handled: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    sizes: dict[tuple[str, str, str], int] = defaultdict(int)
    lines = []
    for path in sorted(RunDir(run_dir).logs.glob("*.jsonl")):
        for raw in path.read_text().splitlines():
            line = json.loads(raw)
            roles[line["actor"]] = line["role"]
            lines.append(line)
    for line in lines:
        if line["event"] == "handled":
            edge = (roles.get(line["peer"], line["peer"]), line["role"], line["kind"])
            handled[edge].append(line["handle_s"])
            sizes[edge] += line["bytes"]
    table = Table(title="message log: handled messages per edge")
    for column in ("from", "to", "kind", "messages", "MB", "handle p50 ms"):
        table.add_column(column, justify="right" if column in ("messages", "MB", "handle p50 ms") else "left")
    for edge, times in sorted(handled.items()):
        table.add_row(*edge, str(len(times)), f"{sizes[edge] / 1e6:.1f}", f"{statistics.median(times) * 1e3:.2f}")
    return table


def trace_timeline(run_dir: Path, trace_id: str) -> Table:
    events = []
    for path in RunDir(run_dir).logs.glob("*.jsonl"):
        events += [json.loads(raw) for raw in path.read_text().splitlines() if trace_id in raw]
    events = sorted((e for e in events if e.get("trace_id") == trace_id), key=lambda e: e["ts"])
    table = Table(title=f"one batch's trace ({trace_id})")
    for column in ("t ms", "actor", "event", "kind", "peer"):
        table.add_column(column)
    for event in events:
        table.add_row(f"{(event['ts'] - events[0]['ts']) * 1e3:.1f}", event["actor"], event["event"], event["kind"], event["peer"])
    return table


async def showcase(run_dir: Path, batch_count: int) -> None:
    console.rule("[bold]troupe runtime showcase")
    processes: list[ActorProcess] = []
    common = {"run": RUN, "run_dir": run_dir, "settings": SETTINGS}
    try:
        registry = await spawn_actor("runtime.registry:Registry", "registry", **common)
        processes.append(registry)
        for index in range(2):
            processes.append(await spawn_actor("examples.showcase_actors:Stage", f"stage-{index}", instance=index,
                                               registry=registry.endpoint, **common))
        processes.append(await spawn_actor("examples.showcase_actors:Sink", "sink-0", registry=registry.endpoint, **common))
        driver = Driver("driver-0", **common)
        ready = asyncio.Event()
        serving = asyncio.create_task(driver.run(registry=registry.endpoint, on_ready=lambda _: ready.set()))
        await ready.wait()
        members = await driver.watch_membership()
        table = Table(title=f"registered actors (registry at {registry.endpoint})")
        for column in ("name", "role", "pid", "endpoint", "state"):
            table.add_column(column)
        for record in sorted(members, key=lambda r: r.name):
            table.add_row(record.name, record.role, str(record.pid), record.endpoint, record.state)
        console.print(table)

        batches = make_batches(batch_count)
        rows = sum(len(batch) for batch in batches)
        console.print(f"\n[bold]1.[/] {batch_count} batches ({rows} rows of 256 floats) through 2 stages into the sink")
        started = time.monotonic()
        await process_all(driver, batches)
        elapsed = time.monotonic() - started
        totals: Totals = await driver.ask("sink-0", TotalsQuery())
        expected = sum(expected_total(batch["x"]) for batch in batches)
        console.print(f"  sink holds {totals.rows} rows, total {totals.total:.1f} (expected {expected:.1f}) "
                      f"in {elapsed:.2f} s ({rows / elapsed:,.0f} rows/s)")

        console.print("\n[bold]2.[/] the same again, killing stage-1 while batches are in flight")
        more = make_batches(batch_count)
        offset = rows
        for batch in more:
            batch.columns["id"] = [row + offset for row in batch.columns["id"]]
        retried = await process_all(driver, more, kill=processes[2])
        await wait_until(lambda: any(e.event == "left" and e.record.name == "stage-1" for e in driver.events), timeout=10)
        totals = await driver.ask("sink-0", TotalsQuery())
        expected += sum(expected_total(batch["x"]) for batch in more)
        exactly_once = totals.ids == list(range(2 * rows))
        console.print(f"  {retried} batches re-sent to the surviving stage; sink holds {totals.rows} rows, "
                      f"every id exactly once: [bold]{exactly_once}[/]")

        driver.stop()
        await serving
    finally:
        await asyncio.gather(*(process.stop() for process in processes))

    console.print()
    console.print(message_stats(run_dir))
    sends = [json.loads(raw) for raw in RunDir(run_dir).message_log("driver-0").read_text().splitlines()]
    first = sends[0]
    work = next(line for line in sends if line["event"] == "send" and line["kind"] == "showcase.work")
    console.print(trace_timeline(run_dir, work["trace_id"]))
    console.print(f"\nlogs: {run_dir / 'logs'} ({first['run']!r} run); read them with any JSON tool.")
    if not exactly_once or abs(totals.total - expected) > 1e-3 * abs(expected):
        raise SystemExit("the showcase lost or duplicated work")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / f"showcase-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    run_event_loop(lambda: showcase(args.run_dir, args.batches), SETTINGS)


if __name__ == "__main__":
    main()
