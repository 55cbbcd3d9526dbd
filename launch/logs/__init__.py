"""A run's structured message logs as a Python library (``troupe logs`` is its command line).

Every actor writes ``RUN_DIR/logs/<instance>.jsonl`` (see `runtime.msglog`); an event
is one parsed line, a plain dict. The modules below are one thing each, and every
function but `LogReader`'s is pure over such events, so `troupe logs`, a notebook and
the unit tests share them:

* `launch.logs.reading`: parse lines, follow files whole lines at a time, merge by time, learn names;
* `launch.logs.selection`: the ``troupe logs`` filters and one trace's timeline;
* `launch.logs.stats`: per-edge counts, bytes and latency percentiles;
* `launch.logs.perfetto`: a Chrome/Perfetto trace of the events;
* `launch.logs.text`: events and sizes as text cells.
"""

from launch.logs.perfetto import perfetto_trace
from launch.logs.reading import MESSAGE_EVENTS, Event, LogReader, Names, merge, parse_line, read_logs
from launch.logs.selection import (
    EventFilter, TimelineStep, TraceLookupError, is_error, kind_matches, parse_since, resolve_trace, select,
    trace_timeline,
)
from launch.logs.stats import EdgeStats, edge_stats
from launch.logs.text import clock, event_cells, human_bytes, short_trace

__all__ = [
    "MESSAGE_EVENTS", "EdgeStats", "Event", "EventFilter", "LogReader", "Names", "TimelineStep", "TraceLookupError",
    "clock", "edge_stats", "event_cells", "human_bytes", "is_error", "kind_matches", "merge", "parse_line",
    "parse_since", "perfetto_trace", "read_logs", "resolve_trace", "select", "short_trace", "trace_timeline",
]
