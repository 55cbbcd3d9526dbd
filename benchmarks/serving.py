"""`troupe serve` with dynamic batching versus without, in one run, on this machine.

Starts two servers on the arithmetic example's model (``examples/arith/data/model``
when `make demo` has built it, else a quick build in a temporary folder): batching on
(``--max-batch 32``, the default ``--max-wait-ms 0``) and off (``--max-batch 1``),
each with one torch thread. Closed-loop users (asyncio clients in this process,
each sending its next request as soon as the last is answered, over one keep-alive
connection) post to ``/generate``
for a fixed time at 1, 8 and 32 concurrent users; requests per second and p99 latency
are measured after a warm-up. Variants are interleaved and repeated; medians are
reported.

Two workloads: ``answers`` (arithmetic prompts, sampled at temperature 1, each
response ends where the model puts its end-of-sequence token, at most 8 tokens) and
``fixed`` (``ignore_eos``, exactly 32 tokens per response, so the work per request does
not depend on the model's training).

Prints a table and, last, one JSON line with the on/off ratios at 1, 8 and 32 users.

    python benchmarks/serving.py [--seconds 6] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["12+7=", "3+15=", "20-4=", "9+9=", "17-8=", "6+13=", "11-11=", "2+19="]
USERS = (1, 8, 32)
WORKLOADS = {
    "answers": {"max_new_tokens": 8, "temperature": 1.0},
    "fixed": {"max_new_tokens": 32, "temperature": 1.0, "ignore_eos": True},
}
SERVERS = {"on": ["--max-batch", "32"], "off": ["--max-batch", "1"]}
WARM_UP_S = 1.0


def model_dir(scratch: Path) -> Path:
    demo = ROOT / "examples" / "arith" / "data" / "model"
    if (demo / "config.json").is_file():
        return demo
    from examples.arith.build import build

    build(scratch / "arith", seed=0, quick=True)
    return scratch / "arith" / "model"


def start_server(model: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    troupe = str(Path(sys.executable).parent / "troupe")
    with open(log, "wb") as output:
        process = subprocess.Popen([troupe, "serve", str(model), "--port", "0", "--threads", "1", *flags],
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    url = None
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", log.read_text())
        if found:
            url = found.group(1)
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    return process, url
            except httpx.HTTPError:  # not listening yet
                pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not come up: {log.read_text()[-2000:]}")


class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON: a user's client.

    httpx's AsyncClient tops out near 460 requests/s here with 32 connections (one
    client per user; 150/s with one shared pool) while the server answers ``/health``
    2,600 times a second, so it would measure itself; this does the least HTTP needs.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)), f"{host}:{port}")

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
        return int(head[0].split()[1]), await self.reader.readexactly(int(headers["content-length"]))

    def close(self) -> None:
        self.writer.close()


async def drive(url: str, users: int, seconds: float, body: dict) -> tuple[float, float]:
    """Requests per second and p99 latency (s) of `users` closed-loop users: the
    requests that ended within `seconds` after a warm-up."""
    latencies: list[float] = []
    failures: list[str] = []
    start = time.perf_counter()
    measure_from, stop_at = start + WARM_UP_S, start + WARM_UP_S + seconds

    async def user(index: int) -> None:
        connection = await Connection.open(url)
        try:
            sent = 0
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                status, answer = await connection.post("/generate", {**body, "prompt": PROMPTS[(index + sent) % 8]})
                ended = time.perf_counter()
                sent += 1
                if status != 200:
                    failures.append(f"{status}: {answer[:200]!r}")
                elif measure_from <= ended < stop_at:
                    latencies.append(ended - began)
        finally:
            connection.close()

    await asyncio.gather(*(user(index) for index in range(users)))
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed at {users} users, e.g. {failures[0]}")
    latencies.sort()
    return len(latencies) / seconds, latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one repetition of 2 s (a smoke run)")
    args = parser.parse_args()
    repeats, seconds = (1, 2.0) if args.quick else (args.repeats, args.seconds)
    print(f"# serving benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cpus  "
          f"python {platform.python_version()}  torch {torch.__version__}  httpx {httpx.__version__}  "
          f"{seconds:g} s per point, repeats {repeats} (medians)")
    with tempfile.TemporaryDirectory() as scratch:
        model = model_dir(Path(scratch))
        servers = {name: start_server(model, flags, Path(scratch) / f"{name}.log") for name, flags in SERVERS.items()}
        print(f"# model {model}")
        try:
            results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
            for _ in range(repeats):
                for workload, body in WORKLOADS.items():
                    for users in USERS:
                        for name, (_, url) in servers.items():  # interleaved: drift hits both alike
                            results.setdefault((workload, name, users), []).append(
                                asyncio.run(drive(url, users, seconds, body)))
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGINT)
            for process, _ in servers.values():
                process.wait(timeout=30)

    ratios: dict[str, float] = {}
    print(f"\n{'workload':>8} {'users':>6} {'batching':>9} {'requests/s':>11} {'p99 ms':>8}")
    for workload in WORKLOADS:
        for users in USERS:
            rates = {}
            for name in SERVERS:
                runs = results[(workload, name, users)]
                rates[name] = statistics.median(rate for rate, _ in runs)
                p99 = statistics.median(latency for _, latency in runs)
                print(f"{workload:>8} {users:>6} {name:>9} {rates[name]:>11.1f} {p99 * 1000:>8.1f}")
            ratios[f"{workload}_rps_ratio_{users}_users"] = round(rates["on"] / rates["off"], 2)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
