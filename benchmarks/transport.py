"""Actor messaging versus raw pyzmq, in one run, on this machine.

Measures, between two OS processes on loopback tcp unless a row says otherwise:

* throughput of 1, 16, 64 and 256 MB tensor batches: actor `tell`s to a sink actor
  (socket frames: shared memory off) versus raw pyzmq DEALER -> ROUTER with ``copy=False``;
* the same-host shared-memory path (runtime.shm) at 16, 64 and 256 MB: actor `tell`s
  through shared memory, versus the same actors over socket frames and versus one
  in-process memcpy of the same bytes (a copy from one warm buffer to another), interleaved;
* small-message round trip p50/p99, stage by stage, so the rows show where an ask's
  time goes: a raw pyzmq REQ/REP pair; the runtime's event-loop socket layer alone
  (raw bytes, no protocol, no actor); the codec alone (encoding and decoding the
  request's and the reply's envelopes and typed messages, in one process, no
  socket); an actor `ask` between two actors in one process over ``inproc://`` (all
  of both sides' Python, no process boundary); and the actor `ask` between processes;
* the cost of the structured message log: the same `ask` with logging on and off;
* the cost of authentication (runtime.security): the same `ask` round trip and 16 MB
  throughput with no authentication, the run's shared secret (the default) and CURVE.

Prints a table and, last, one JSON line with the ratios (actor / raw for
throughput, shm / memcpy and shm / socket for shared memory, actor / raw for latency,
logging on / off - 1 for the log cost, secret / none and curve / none for
authentication) and the p50 of each round-trip stage in microseconds.

    python benchmarks/transport.py [--quick] [--repeats N] [--auth-only | --shm-only | --rtt-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.envelope import Envelope, decode_envelope, encode_envelope, new_id  # noqa: E402
from protocols.messages import from_payload, kind_of, message, to_payload  # noqa: E402
from runtime import transport  # noqa: E402
from runtime.actor import Actor, handler, start_actor  # noqa: E402
from runtime.host import run_event_loop  # noqa: E402
from runtime.run_dir import RunDir  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402
from runtime.statistics import percentile  # noqa: E402
from runtime.spawn import spawn_actor  # noqa: E402

MB = 1 << 20


@message("bench.chunk")
class Chunk:  # driver -> Sink (tell)
    data: torch.Tensor


@message("bench.count")
class Count:  # driver -> Sink: how many chunks so far?
    pass


@message("bench.counted")
class Counted:  # Sink -> driver
    chunks: int


@message("bench.ping")
class SmallPing:  # driver -> Sink
    value: int


@message("bench.pong")
class SmallPong:  # Sink -> driver
    value: int


class Sink(Actor):
    """Receives chunks and answers pings."""

    role = "sink"

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.chunks = 0

    @handler
    async def chunk(self, item: Chunk) -> None:
        self.chunks += 1

    @handler
    async def count(self, request: Count) -> Counted:
        return Counted(self.chunks)

    @handler
    async def ping(self, request: SmallPing) -> SmallPong:
        return SmallPong(request.value)


class Driver(Actor):
    role = "driver"


# ----------------------------------------------------------------- raw pyzmq
WARM_UP = 2
"""Messages of each size sent before timing, so both sides have touched their memory."""


def _raw_sink(endpoint: str, count: int, ready: mp.Event) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    for expected in (WARM_UP, count):
        for _ in range(expected):
            frames = sock.recv_multipart(copy=False)
        sock.send_multipart([frames[0].bytes, b"done"])
    sock.close(linger=1000)
    zmq.Context.instance().term()  # waits for the reply to leave before the process exits


def raw_throughput(size_bytes: int, count: int, port: int) -> float:
    """Bytes per second from a DEALER to a ROUTER in another process (copy=False both ways)."""
    endpoint = f"tcp://127.0.0.1:{port}"
    ready = mp.Event()
    sink = mp.Process(target=_raw_sink, args=(endpoint, count, ready))
    sink.start()
    ready.wait()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    payload = torch.randint(0, 255, (size_bytes,), dtype=torch.uint8)
    view = memoryview(payload.numpy())
    for _ in range(WARM_UP):
        sock.send_multipart([b"h", view], copy=False)
    sock.recv_multipart()
    start = time.perf_counter()
    for _ in range(count):
        sock.send_multipart([b"h", view], copy=False)
    sock.recv_multipart()
    elapsed = time.perf_counter() - start
    sock.close(linger=0)
    sink.join()
    return size_bytes * count / elapsed


def _raw_rep(endpoint: str, count: int, ready: mp.Event) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(endpoint)
    ready.set()
    for _ in range(count):
        sock.send(sock.recv())
    sock.close(linger=1000)
    zmq.Context.instance().term()


def raw_round_trips(count: int, port: int) -> list[float]:
    endpoint = f"tcp://127.0.0.1:{port}"
    ready = mp.Event()
    server = mp.Process(target=_raw_rep, args=(endpoint, count, ready))
    server.start()
    ready.wait()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.connect(endpoint)
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        sock.send(i.to_bytes(8, "little") + b"x" * 56)
        sock.recv()
        latencies.append(time.perf_counter() - start)
    sock.close(linger=0)
    server.join()
    return latencies


# ------------------------------------------- the event-loop transport alone
def _loop_echo(endpoint: str, count: int, ready: mp.Event) -> None:
    async def serve() -> None:
        router, _ = transport.bind_router(endpoint, 1 << 30)
        finished = asyncio.Event()
        seen = 0

        def echo(frames: list[zmq.Frame]) -> None:
            nonlocal seen
            echoing.send(frames)
            seen += 1
            if seen == count:
                finished.set()

        echoing = transport.LoopSocket(router, echo, lambda error: finished.set())
        ready.set()
        await finished.wait()
        await asyncio.sleep(0.2)  # let the last reply leave
        echoing.close()

    run_event_loop(serve, RuntimeSettings())


def loop_round_trips(count: int, port: int) -> list[float]:
    """Round trips through runtime.transport.LoopSocket with raw bytes: the event loop and
    ZeroMQ without the protocol, the mailbox or the actor (the floor an actor can reach)."""
    endpoint = f"tcp://127.0.0.1:{port}"
    ready = mp.Event()
    server = mp.Process(target=_loop_echo, args=(endpoint, count, ready))
    server.start()
    ready.wait()

    async def drive() -> list[float]:
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        dealer = transport.LoopSocket(
            transport.connect_dealer(endpoint), lambda frames: waiting.pop().set_result(None), print
        )
        latencies = []
        for i in range(count):
            start = time.perf_counter()
            waiting.append(loop.create_future())
            dealer.send([i.to_bytes(8, "little") + b"x" * 56])
            await waiting[-1]
            latencies.append(time.perf_counter() - start)
        dealer.close()
        return latencies

    latencies = run_event_loop(drive, RuntimeSettings())
    server.join()
    return latencies


# ---------------------------------------------------------------- actors
async def with_sink(settings: RuntimeSettings, run_dir: str | None, body):  # type: ignore[no-untyped-def]
    """Start a Sink process and a Driver actor here; run `body(driver, sink_endpoint)`."""
    sink = await spawn_actor("benchmarks.transport:Sink", "sink-0", settings=settings, run_dir=run_dir)
    driver = Driver("driver-0", settings=settings, run_dir=run_dir)
    ready = asyncio.Event()
    serving = asyncio.create_task(driver.run(on_ready=lambda _: ready.set()))
    await ready.wait()
    try:
        return await body(driver, sink.endpoint)
    finally:
        driver.stop()
        await serving
        await sink.stop()


def actor_throughput(size_bytes: int, count: int, settings: RuntimeSettings, warm_up: int = WARM_UP) -> float:
    payload = torch.randint(0, 255, (size_bytes,), dtype=torch.uint8)

    async def body(driver: Driver, sink: str) -> float:
        await driver.ask(sink, Count())  # the first exchange tells each side the other shares its host
        for _ in range(warm_up):
            await driver.tell(sink, Chunk(payload))
        while (await driver.ask(sink, Count())).chunks < warm_up:
            pass
        start = time.perf_counter()
        for _ in range(count):
            await driver.tell(sink, Chunk(payload))
        while (await driver.ask(sink, Count())).chunks < warm_up + count:
            pass
        return size_bytes * count / (time.perf_counter() - start)

    return run_event_loop(lambda: with_sink(settings, None, body), settings)


def actor_round_trips(count: int, settings: RuntimeSettings, run_dir: str | None) -> list[float]:
    async def body(driver: Driver, sink: str) -> list[float]:
        for i in range(200):  # warm up connections and caches
            await driver.ask(sink, SmallPing(i))
        latencies = []
        for i in range(count):
            start = time.perf_counter()
            await driver.ask(sink, SmallPing(i))
            latencies.append(time.perf_counter() - start)
        return latencies

    return run_event_loop(lambda: with_sink(settings, run_dir, body), settings)


def codec_round_trips(count: int, settings: RuntimeSettings) -> list[float]:
    """Seconds per round trip's worth of codec work, in one process: encode the request's
    envelope, decode it and its typed message, then the same for the reply, as an ask
    and its answer do (no socket, no event loop)."""
    limits = (settings.max_message_bytes, settings.max_header_bytes, settings.max_header_objects)

    def carry(msg: object, expects_reply: bool) -> object:
        now = time.time()
        envelope = Envelope(
            kind=kind_of(msg), message_id=new_id(), sender="driver-0", sent_at=now, payload=to_payload(msg),
            trace_id=new_id(), deadline=now + 30.0 if expects_reply else None, expects_reply=expects_reply,
            credits=None if expects_reply else (1, 200),
        )
        frames, _ = encode_envelope(envelope)
        received = decode_envelope([memoryview(frame) for frame in frames], *limits)
        return from_payload(received.kind, received.payload)

    latencies = []
    for i in range(count):
        start = time.perf_counter()
        request = carry(SmallPing(i), True)
        carry(SmallPong(request.value), False)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - start)
    return latencies


def inproc_round_trips(count: int, settings: RuntimeSettings) -> list[float]:
    """Actor asks between two actors in this process over ``inproc://``: both sides' Python
    (envelopes, typed messages, dispatch, credit) and ZeroMQ, without a process boundary."""

    async def run() -> list[float]:
        sink = Sink("sink-0", settings=settings)
        driver = Driver("driver-0", settings=settings)
        serving = [await start_actor(sink, endpoint=f"inproc://bench-sink-{os.getpid()}"), await start_actor(driver)]
        try:
            for i in range(200):  # warm up, as between processes
                await driver.ask(sink.endpoint, SmallPing(i))  # type: ignore[arg-type]
            latencies = []
            for i in range(count):
                start = time.perf_counter()
                await driver.ask(sink.endpoint, SmallPing(i))  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - start)
            return latencies
        finally:
            sink.stop()
            driver.stop()
            await asyncio.gather(*serving)

    return run_event_loop(run, settings)


def memcpy_rate(size_bytes: int, count: int) -> float:
    """Bytes per second of one in-process memcpy between two warm buffers of `size_bytes`."""
    source = torch.randint(0, 255, (size_bytes,), dtype=torch.uint8)
    target = torch.empty_like(source)
    source_view, target_view = memoryview(source.numpy()), memoryview(target.numpy())
    target_view[:] = source_view  # both buffers touched before timing
    start = time.perf_counter()
    for _ in range(count):
        target_view[:] = source_view
    return size_bytes * count / (time.perf_counter() - start)


def shared_memory_rates(repeats: int, sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Actor throughput through shared memory versus socket frames versus memcpy, interleaved.

    Both actor paths warm up with a full credit window of messages first: a sender that
    sends faster than the receiver frees needs that many segments in its pool (and the
    socket path that many receive buffers), made once, so the timed messages measure the
    steady state, as the memcpy between two warm buffers does.
    """
    shm = RuntimeSettings(log_messages=False)
    socket_only = RuntimeSettings(log_messages=False, shared_memory=False)
    ratios: dict[str, float] = {}
    print(f"\n{'size':>8} {'memcpy GB/s':>12} {'socket GB/s':>12} {'shm GB/s':>9} {'shm/memcpy':>11} {'shm/socket':>11}")
    for size_mb, count in sizes:
        rates: dict[str, list[float]] = {"memcpy": [], "socket": [], "shm": []}
        warm_up = min(shm.window_messages, shm.window_bytes // (size_mb * MB)) + WARM_UP
        for repeat in range(repeats):
            order = [("memcpy", None), ("socket", socket_only), ("shm", shm)]
            for name, settings in order[repeat % 3:] + order[:repeat % 3]:  # rotated, so drift hits all alike
                if settings is None:
                    rates[name].append(memcpy_rate(size_mb * MB, count))
                else:
                    rates[name].append(actor_throughput(size_mb * MB, count, settings, warm_up))
        memcpy, socket_rate, shm_rate = (statistics.median(rates[name]) for name in ("memcpy", "socket", "shm"))
        ratios[f"shm_memcpy_ratio_{size_mb}mb"] = round(shm_rate / memcpy, 3)
        ratios[f"shm_socket_ratio_{size_mb}mb"] = round(shm_rate / socket_rate, 3)
        print(f"{size_mb:>6}MB {memcpy / 1e9:>12.2f} {socket_rate / 1e9:>12.2f} {shm_rate / 1e9:>9.2f} "
              f"{shm_rate / memcpy:>11.2f} {shm_rate / socket_rate:>11.2f}")
    return ratios


def authentication_costs(repeats: int, round_trips: int) -> dict[str, float]:
    """Ask p50 and 16 MB throughput with each authentication mechanism, interleaved."""
    from runtime.security import generate_keys, generate_secret

    with tempfile.TemporaryDirectory() as keys:
        generate_secret(Path(keys, "secret"))
        generate_keys(keys)
        socket_only = {"log_messages": False, "shared_memory": False}  # what authentication costs on the socket
        mechanisms = {
            "none": RuntimeSettings(**socket_only),
            "secret": RuntimeSettings(**socket_only, secret_file=str(Path(keys, "secret"))),
            "curve": RuntimeSettings(**socket_only, curve_keys_dir=keys),
        }
        p50: dict[str, list[float]] = {name: [] for name in mechanisms}
        rate: dict[str, list[float]] = {name: [] for name in mechanisms}
        names = list(mechanisms)
        for repeat in range(repeats):
            # rotate the order each repetition, so drift and warm-up hit every mechanism alike
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                p50[name].append(percentile(actor_round_trips(round_trips, mechanisms[name], None), 50))
                rate[name].append(actor_throughput(16 * MB, 60, mechanisms[name]))
    print(f"\n{'authentication':>24} {'ask p50 us':>11} {'16MB GB/s':>10}")
    for name in mechanisms:
        print(f"{name:>24} {statistics.median(p50[name]) * 1e6:>11.0f} {statistics.median(rate[name]) / 1e9:>10.2f}")
    ratios = {}
    for name in ("secret", "curve"):
        ratios[f"auth_{name}_rtt_p50_ratio"] = round(statistics.median(p50[name]) / statistics.median(p50["none"]), 3)
        ratios[f"auth_{name}_throughput_ratio_16mb"] = round(statistics.median(rate[name]) / statistics.median(rate["none"]), 3)
    return ratios


def round_trip_stages(repeats: int, round_trips: int, port: int) -> dict[str, float]:
    """The small-message round trip, stage by stage (see the module docstring), interleaved."""
    quiet = RuntimeSettings(log_messages=False, shared_memory=False)  # the socket path, against raw pyzmq
    logged = RuntimeSettings(log_messages=True, shared_memory=False)
    runs: dict[str, list[list[float]]] = {
        "raw REQ/REP": [], "loop transport only": [], "codec only": [], "actor ask, in-process": [],
        "actor ask, log off": [], "actor ask, log on": [],
    }
    lines = 0
    for _ in range(repeats):
        port += 2
        runs["raw REQ/REP"].append(raw_round_trips(round_trips, port))
        runs["loop transport only"].append(loop_round_trips(round_trips, port + 1))
        runs["codec only"].append(codec_round_trips(round_trips, quiet))
        runs["actor ask, in-process"].append(inproc_round_trips(round_trips, quiet))
        runs["actor ask, log off"].append(actor_round_trips(round_trips, quiet, None))
        with tempfile.TemporaryDirectory() as run_dir:
            runs["actor ask, log on"].append(actor_round_trips(round_trips, logged, run_dir))
            lines = sum(1 for path in RunDir(run_dir).logs.glob("*.jsonl") for _ in open(path))

    def median_of(label: str, statistic) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(statistic(values) for values in runs[label])

    p50 = {label: median_of(label, lambda v: percentile(v, 50)) for label in runs}
    p99 = {label: median_of(label, lambda v: percentile(v, 99)) for label in runs}
    mean = {label: median_of(label, statistics.fmean) for label in runs}
    print(f"\n{'round trip (small msg)':>24} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'p50 / raw':>10}")
    for label in runs:
        print(f"{label:>24} {p50[label] * 1e6:>8.0f} {p99[label] * 1e6:>8.0f} {mean[label] * 1e6:>8.0f} "
              f"{p50[label] / p50['raw REQ/REP']:>10.2f}")
    print(f"(one logged run wrote {lines} JSON lines)")
    return {
        "rtt_p50_ratio": round(p50["actor ask, log off"] / p50["raw REQ/REP"], 3),
        "loop_transport_rtt_p50_ratio": round(p50["loop transport only"] / p50["raw REQ/REP"], 3),
        "rtt_p99_ratio": round(p99["actor ask, log off"] / p99["raw REQ/REP"], 3),
        "logging_cost_p50": round(p50["actor ask, log on"] / p50["actor ask, log off"] - 1, 3),
        "logging_cost_mean": round(mean["actor ask, log on"] / mean["actor ask, log off"] - 1, 3),
        "raw_rtt_p50_us": round(p50["raw REQ/REP"] * 1e6, 1),
        "loop_transport_rtt_p50_us": round(p50["loop transport only"] * 1e6, 1),
        "codec_round_trip_p50_us": round(p50["codec only"] * 1e6, 1),
        "inproc_ask_p50_us": round(p50["actor ask, in-process"] * 1e6, 1),
        "ask_rtt_p50_us": round(p50["actor ask, log off"] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition and fewer round trips (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians are reported")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--auth-only", action="store_true", help="only the authentication rows")
    only.add_argument("--shm-only", action="store_true", help="only the shared-memory rows")
    only.add_argument("--rtt-only", action="store_true", help="only the small-message round-trip rows")
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    repeats = 1 if args.quick else args.repeats
    round_trips = 500 if args.quick else 3000
    quiet = RuntimeSettings(log_messages=False, shared_memory=False)  # the socket path, against raw pyzmq
    shm_sizes = [(16, 60), (64, 24), (256, 8)]
    print(f"# transport benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cpus  "
          f"python {platform.python_version()}  torch {torch.__version__}  pyzmq {zmq.__version__} "
          f"(libzmq {zmq.zmq_version()})  repeats {repeats} (medians)")

    if args.auth_only:
        print(json.dumps(authentication_costs(repeats, round_trips)))
        return
    if args.shm_only:
        print(json.dumps(shared_memory_rates(repeats, shm_sizes)))
        return
    port = 47000
    if args.rtt_only:
        print(json.dumps(round_trip_stages(repeats, round_trips, port)))
        return
    ratios: dict[str, float] = {}
    print(f"\n{'size':>8} {'raw GB/s':>10} {'actor GB/s':>11} {'ratio':>7}")
    for size_mb, count in [(1, 400), (16, 60), (64, 24), (256, 8)]:
        raw, actor = [], []
        for _ in range(repeats):  # interleaved, so drift in the machine hits both alike
            port += 1
            raw.append(raw_throughput(size_mb * MB, count, port))
            actor.append(actor_throughput(size_mb * MB, count, quiet))
        raw_rate, actor_rate = statistics.median(raw), statistics.median(actor)
        ratios[f"throughput_ratio_{size_mb}mb"] = round(actor_rate / raw_rate, 3)
        print(f"{size_mb:>6}MB {raw_rate / 1e9:>10.2f} {actor_rate / 1e9:>11.2f} {actor_rate / raw_rate:>7.2f}")
    ratios.update(shared_memory_rates(repeats, shm_sizes))
    ratios.update(round_trip_stages(repeats, round_trips, port))
    ratios.update(authentication_costs(repeats, round_trips))
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
