"""`troupe logs RUN_DIR`: inspect a run's structured message logs.

Modes: the merged event listing (default; ``--follow`` keeps it going), the
timeline of one trace (``--trace``), per-edge statistics (``--stats``) and a
Perfetto trace file (``--perfetto``). The work is done by the pure functions of
`launch.logs`; this module reads arguments, prints and follows. See docs/logs.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from launch.logs import (
    Event, EventFilter, LogReader, Names, TraceLookupError, edge_stats, event_cells, human_bytes, merge,
    parse_since, perfetto_trace, read_logs, resolve_trace, select, trace_timeline,
)

FOLLOW_INTERVAL_S = 0.2
"""How often ``--follow`` looks for new lines (the writers flush every 0.2 s too)."""
_EVENT_STYLES = {"send": "blue", "receive": "cyan", "handled": "green", "failed": "bold red"}
_CELL_STYLES = ("dim", "bold", None, "magenta", None, None, "yellow", "dim", "red")
_RIGHT_ALIGNED = {5}  # the bytes column


def _since(text: str) -> float:
    try:
        return parse_since(text, time.time())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run directory (it holds logs/)")
    filters = parser.add_argument_group("filters", "combined with AND; a flag given twice matches either value")
    filters.add_argument("--role", action="append", default=[], help="events written by actors of this role")
    filters.add_argument("--instance", action="append", default=[], metavar="NAME", help="events written by this actor")
    filters.add_argument(
        "--kind", action="append", default=[],
        help="message kind (lifecycle lines: event name); a trailing * matches a prefix: 'registry.*'",
    )
    filters.add_argument("--trace", metavar="ID", help="one trace (a unique prefix is enough); alone: its timeline")
    filters.add_argument("--since", type=_since, metavar="WHEN", help="30s, 5m, 2h, 1d ago; an ISO-8601 time; a unix time")
    filters.add_argument("--errors", action="store_true", help="failed events, crashes and lifecycle errors only")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    mode.add_argument("--stats", action="store_true", help="per edge: messages, bytes, delivery and handle p50/p99")
    mode.add_argument("--perfetto", type=Path, metavar="OUT", help="write a Chrome/Perfetto trace (JSON) to OUT")
    parser.add_argument("--json", action="store_true", help="JSON lines (events as logged; --stats: one row each)")


def run(args: argparse.Namespace) -> int:
    from runtime.run_dir import RunDir

    logs_dir = RunDir(args.run_dir).logs
    if not args.run_dir.is_dir():
        return _fail(f"{args.run_dir} is not a directory: give the run directory (runs/<run>)", 2)
    if not logs_dir.is_dir():
        return _fail(f"{args.run_dir} has no logs/ folder: is it a run directory, and did the run log?", 2)
    event_filter = EventFilter(
        roles=tuple(args.role), instances=tuple(args.instance), kinds=tuple(args.kind),
        since=args.since, errors=args.errors,
    )
    try:
        if args.follow:
            return _follow(logs_dir, event_filter, args)
        return _inspect(logs_dir, event_filter, args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _inspect(logs_dir: Path, event_filter: EventFilter, args: argparse.Namespace) -> int:
    events, warnings = read_logs(logs_dir)
    _warn(warnings)
    names = Names.from_events(events)
    if args.trace is not None:
        try:
            event_filter = replace(event_filter, trace=resolve_trace(events, args.trace))
        except TraceLookupError as error:
            return _fail(str(error), 1)
    if args.stats:
        return _stats(events, names, event_filter, args)
    if args.perfetto is not None:
        return _perfetto(events, names, event_filter, args.perfetto)
    selected = select(events, event_filter)
    if not selected:
        return _nothing()
    if args.json:
        _print_json_lines(selected)
    elif args.trace is not None:
        _print_timeline(selected, event_filter.trace or "", names)
    else:
        printer = _EventPrinter(names)
        printer.fit(selected)
        printer.print(selected)
    return 0


def _stats(events: list[Event], names: Names, event_filter: EventFilter, args: argparse.Namespace) -> int:
    # --errors keeps the rows with failures, rather than dropping the sends that failures are counted against.
    rows = edge_stats(select(events, replace(event_filter, errors=False), names), names)
    rows = [row for row in rows if row.failed] if args.errors else rows
    if not rows:
        return _nothing()
    if args.json:
        _print_json_lines(row._asdict() for row in rows)
    else:
        _print_stats(rows)
    return 0


def _perfetto(events: list[Event], names: Names, event_filter: EventFilter, out: Path) -> int:
    selected = select(events, event_filter, names)
    document = perfetto_trace(selected, names)
    out.write_bytes(orjson.dumps(document))
    arrows = sum(1 for item in document["traceEvents"] if item["ph"] == "s")
    print(f"wrote {len(selected)} events ({arrows} message arrows) to {out}; "
          "open it at https://ui.perfetto.dev (Open trace file) or chrome://tracing", file=sys.stderr)
    return 0 if selected else _nothing()


def _follow(logs_dir: Path, event_filter: EventFilter, args: argparse.Namespace) -> int:
    reader = LogReader(logs_dir)
    names = Names()
    printer = _EventPrinter(names)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True  # checked between polls, so no line is cut in half

    previous = signal.signal(signal.SIGTERM, stop)
    first = True
    try:
        while not stopping:
            events, warnings = reader.read_new()
            _warn(warnings)
            names.learn(events)
            if first and args.trace is not None:
                event_filter = _follow_trace(events, event_filter, args.trace)
            selected = select(merge(events), event_filter)
            if args.json:
                _print_json_lines(selected)
            else:
                if first:
                    printer.fit(selected)
                printer.print(selected)
            sys.stdout.flush()
            first = False
            time.sleep(FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:  # Ctrl-C is how a user ends --follow
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _follow_trace(events: list[Event], event_filter: EventFilter, prefix: str) -> EventFilter:
    """The full trace id when the prefix names one already; else follow whatever starts with it."""
    try:
        return replace(event_filter, trace=resolve_trace(events, prefix))
    except TraceLookupError:
        return replace(event_filter, trace=prefix, trace_prefix=True)


# ----------------------------------------------------------------- printing
def _fail(message: str, code: int) -> int:
    print(f"troupe logs: error: {message}", file=sys.stderr)
    return code


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"troupe logs: warning: {warning} (line skipped)", file=sys.stderr)


def _nothing() -> int:
    print("troupe logs: no matching events", file=sys.stderr)
    return 0


def _print_json_lines(items: Any) -> None:
    write = sys.stdout.write
    for item in items:
        write(orjson.dumps(item).decode() + "\n")


def _console() -> Any:
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False, soft_wrap=True)
    return Console(color_system=None, highlight=False, soft_wrap=True, width=240)


def _print_table(table: Any) -> None:
    """A table at its natural width: a narrow terminal wraps its lines rather than squeezing its cells."""
    console = _console()
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    console.width = max(console.width, natural)
    console.print(table)


class _EventPrinter:
    """One aligned line per event; rich colours only when stdout is a terminal.

    Column widths are fitted to the first batch and only ever grow, so a followed
    stream stays aligned as long as its values are no wider than what came first.
    """

    def __init__(self, names: Names) -> None:
        self.names = names
        self.widths = [0] * 9
        self.console = _console() if sys.stdout.isatty() else None

    def fit(self, events: list[Event]) -> None:
        for event in events:
            self._grow(event_cells(event, self.names))

    def _grow(self, cells: tuple[str, ...]) -> None:
        self.widths = [max(width, len(cell)) for width, cell in zip(self.widths, cells)]

    def print(self, events: list[Event]) -> None:
        for event in events:
            cells = event_cells(event, self.names)
            self._grow(cells)
            padded = [
                cell.rjust(width) if index in _RIGHT_ALIGNED else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(cells, self.widths))
            ]
            if self.console is None:
                print("  ".join(padded).rstrip())
                continue
            from rich.text import Text

            line = Text()
            for index, cell in enumerate(padded):
                style = _EVENT_STYLES.get(event["event"], "yellow") if index == 2 else _CELL_STYLES[index]
                line.append(cell + "  ", style=style or "")
            line.rstrip()
            self.console.print(line)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_stats(rows: list[Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title="messages per edge (latencies in ms, nearest-rank percentiles)")
    for header in ("sender", "receiver", "kind"):
        table.add_column(header)
    for header in ("messages", "bytes", "deliver p50", "deliver p99", "handle p50", "handle p99", "failed"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            Text(row.sender), Text(row.receiver), Text(str(row.kind)), str(row.messages), human_bytes(row.bytes),
            _ms(row.delivery_p50_ms), _ms(row.delivery_p99_ms), _ms(row.handle_p50_ms), _ms(row.handle_p99_ms),
            Text(str(row.failed), style="red" if row.failed else ""),
        )
    _print_table(table)


def _print_timeline(events: list[Event], trace_id: str, names: Names) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    steps = trace_timeline(events, trace_id)
    roles = sorted({step.event.get("role", "?") for step in steps})
    title = (f"trace {trace_id}: {len(steps)} events, roles {', '.join(roles)}, "
             f"{steps[-1].offset_ms:.2f} ms from first to last")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title=Text(title))
    for header, justify in (("+ms", "right"), ("gap ms", "right"), ("actor", "left"), ("role", "left"),
                            ("event", "left"), ("kind", "left"), ("peer", "left"), ("bytes", "right"),
                            ("queue / handle", "left"), ("error", "left")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for step in steps:
        _, actor, event, kind, peer, size, timing, _, detail = event_cells(step.event, names)
        table.add_row(
            f"{step.offset_ms:.3f}", f"{step.gap_ms:.3f}", Text(actor), Text(str(step.event.get("role", "?"))),
            Text(event, style=_EVENT_STYLES.get(event, "yellow")), Text(kind), Text(peer), size, timing,
            Text(detail, style="red"),
        )
    _print_table(table)
