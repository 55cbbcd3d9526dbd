"""`troupe loadtest URL`: load-test a served model with locust, and say what it can carry.

Runs locust headless, in its own process, with the locustfile shipped in this package
(launch/locustfile.py), writes locust's CSV and JSON statistics, every request's timing
and a summary into ``--out``, and prints the summary: throughput, latency percentiles,
failures, tokens per second, and the capacity within a latency objective with a
planning figure (launch/loadtest.py defines each number). Exits 1 if any request
failed, like locust.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

STOP_TIMEOUT_S = 30
"""At the end, users finish the request they are in for at most this long."""


def _duration(text: str) -> float:
    from launch.loadtest import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the service, e.g. http://127.0.0.1:8000")
    load = parser.add_argument_group("load")
    load.add_argument("--users", type=int, default=50, help="concurrent users at full load (default 50)")
    load.add_argument("--spawn-rate", type=float, default=5.0, help="users added per second (default 5)")
    load.add_argument("--duration", type=_duration, default=60.0, metavar="TIME",
                      help="how long to run: 60s, 5m, 1h30m (default 60s)")
    load.add_argument("--api", choices=("generate", "completions", "chat"), default="generate",
                      help="POST /generate (default), /v1/completions or /v1/chat/completions")
    load.add_argument("--prompt-file", type=Path, default=None, metavar="F",
                      help="prompts, one per line: JSON with a 'prompt' field, or plain text")
    load.add_argument("--max-new-tokens", type=int, default=16, help="tokens per response, at most (default 16)")
    load.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy")
    load.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    objective = parser.add_argument_group("capacity")
    objective.add_argument("--slo-ms", type=float, default=1000.0, help="the latency objective (default 1000)")
    objective.add_argument("--slo-percentile", type=float, default=95.0,
                           help="the latency percentile the objective bounds (default 95)")
    objective.add_argument("--window", type=_duration, default=5.0, metavar="TIME",
                           help="length of the windows the capacity is measured over (default 5s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the statistics (default: loadtest-<time> in the current folder)")


def run(args: argparse.Namespace) -> int:
    from launch.loadtest import format_summary, read_samples, summarize

    problem = _check_arguments(args)
    if problem:
        print(f"troupe loadtest: {problem}", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    unready = _not_ready(url)
    if unready:
        print(f"troupe loadtest: {unready}", file=sys.stderr)
        return 2
    out = args.out or Path(f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    samples_file, log_file = out / "requests.jsonl", out / "locust.log"
    samples_file.unlink(missing_ok=True)
    print(f"troupe loadtest: {args.users} users (+{args.spawn_rate:g}/s) on {url} via {args.api} "
          f"for {args.duration:g} s", flush=True)
    with resources.as_file(resources.files("launch").joinpath("locustfile.py")) as locustfile:
        command = [
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", url,
            "--users", str(args.users), "--spawn-rate", f"{args.spawn_rate:g}", "--run-time", f"{args.duration:g}s",
            "--stop-timeout", str(STOP_TIMEOUT_S), "--csv", str(out / "locust"), "--csv-full-history",
            "--json-file", str(out / "locust"), "--only-summary", "--loglevel", "WARNING",
            "--api", args.api, "--max-new-tokens", str(args.max_new_tokens), "--temperature", f"{args.temperature:g}",
            "--samples-file", str(samples_file),
            *(["--prompt-file", str(args.prompt_file)] if args.prompt_file else []),
            *(["--ignore-eos"] if args.ignore_eos else []),
        ]
        with open(log_file, "w") as log:
            locust = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                                    timeout=args.duration + STOP_TIMEOUT_S + 120)
    if not samples_file.exists():
        print(f"troupe loadtest: locust exited {locust.returncode} without results; "
              f"the end of {log_file}:\n{_tail(log_file)}", file=sys.stderr)
        return 1
    summary = summarize(read_samples(samples_file), args.slo_ms, args.slo_percentile, args.window)
    (out / "summary.json").write_text(summary.to_json() + "\n")
    print(format_summary(summary))
    print(f"stats         {out}/: locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust.json, "
          f"requests.jsonl, summary.json")
    return 1 if summary.failures else 0


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.users < 1:
        return "--users must be at least 1"
    if args.spawn_rate <= 0:
        return "--spawn-rate must be positive"
    if args.max_new_tokens < 1:
        return "--max-new-tokens must be at least 1"
    if not 0 < args.slo_percentile <= 100:
        return "--slo-percentile must be in (0, 100]"
    if args.slo_ms <= 0:
        return "--slo-ms must be positive"
    if args.prompt_file is not None and not args.prompt_file.is_file():
        return f"--prompt-file {args.prompt_file} does not exist"
    if not args.url.startswith(("http://", "https://")):
        return f"{args.url} is not an http(s) URL: write http://HOST:PORT"
    return None


def _not_ready(url: str) -> str | None:
    """Why the service cannot be load-tested now (None when it is ready). A service
    without ``/ready`` (another OpenAI-compatible server) is taken as ready."""
    import httpx

    try:
        response = httpx.get(f"{url}/ready", timeout=10)
    except httpx.HTTPError as error:
        return f"cannot reach {url}: {error}; is troupe serve running there?"
    if response.status_code == 503:
        return f"{url} is not ready yet ({response.text.strip()}): wait until GET /ready answers 200"
    return None


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
