"""ZeroMQ sockets for actors: one ROUTER to receive, one DEALER per peer to send.

Every socket the runtime opens is made here, tracked until it is closed, and
closed with ``linger=0`` so a stopped actor never blocks on undeliverable data;
only an actor's receiving socket, at stop, keeps its last replies for a bounded
``stop_linger_s`` (`flush_on_exit` waits for them before the process exits).
Endpoints default to loopback: ``tcp://127.0.0.1:*`` binds a free port.

`LoopSocket` ties a plain (blocking-API) ZeroMQ socket to the asyncio event loop
with one reader callback on the socket's file descriptor: every readiness event
drains the socket with non-blocking receives and hands each message to a
callback, and sends go out at once with a non-blocking send, queueing only when
ZeroMQ pushes back. Measured on the 2-core benchmark machine this costs about a
third of the round-trip time that `zmq.asyncio` adds (a future and a task wake-up
per receive there; none here), which is what keeps an actor round trip near raw
ZeroMQ (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from runtime.security import Credentials, CurveKeys, ensure_authenticator, is_loopback_endpoint, make_client, make_server

DEFAULT_ENDPOINT = "tcp://127.0.0.1:*"

_open_sockets: weakref.WeakValueDictionary[int, zmq.Socket] = weakref.WeakValueDictionary()
_socket_labels: dict[int, str] = {}
_socket_ids = itertools.count()


# Plain ints: pyzmq's flag enums cost a Python enum construction per bitwise operation,
# which on the message path adds up to tens of microseconds per round trip.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)

MAX_MESSAGES_PER_WAKEUP = 64
MAX_SECONDS_PER_WAKEUP = 0.01
"""A busy socket yields to the event loop after this many messages or this much time,
whichever comes first, so one peer's flood (or a run of messages that are expensive to
decode) cannot starve timers, heartbeats or other sockets."""


def context() -> zmq.Context:
    """The process's shared ZeroMQ context."""
    return zmq.Context.instance()


def flush_on_exit(timeout_s: float) -> None:
    """Before the process exits: wait (at most `timeout_s`) until messages of sockets
    closed with a linger have left, closing any socket still open without one."""
    ctx = zmq.Context.instance()
    flushed = threading.Thread(target=ctx.destroy, kwargs={"linger": 0}, daemon=True, name="zmq-flush")
    flushed.start()
    flushed.join(timeout_s)


def open_sockets() -> list[str]:
    """Labels of every runtime socket still open in this process (for leak checks)."""
    return [_socket_labels[key] for key, sock in list(_open_sockets.items()) if not sock.closed]


def _track(sock: zmq.Socket, label: str) -> zmq.Socket:
    key = next(_socket_ids)
    _open_sockets[key] = sock
    _socket_labels[key] = label
    weakref.finalize(sock, _socket_labels.pop, key, None)
    return sock


def bind_router(endpoint: str, max_message_bytes: int, keys: Credentials | None = None) -> tuple[zmq.Socket, str]:
    """A ROUTER bound to `endpoint`; returns it and the endpoint actually bound.

    ``tcp://host:*`` picks a free port. Frames larger than `max_message_bytes` make
    ZeroMQ drop the sending peer's connection before the bytes are buffered. With
    `keys`, only peers holding the run's credentials can talk to it (runtime.security);
    binding beyond loopback needs CURVE keys (a shared secret travels in the clear).
    """
    if not isinstance(keys, CurveKeys) and not is_loopback_endpoint(endpoint):
        raise PermissionError(
            f"refusing to bind {endpoint} without encrypted authentication: beyond loopback every socket needs "
            "CURVE keys (set network.curve: true in the topology, or RuntimeSettings.curve_keys_dir)"
        )
    sock = context().socket(zmq.ROUTER)
    if keys is not None:
        ensure_authenticator(context(), keys)
        make_server(sock, keys)
    sock.setsockopt(zmq.LINGER, 0)
    # An unroutable reply (the asker is gone) raises EHOSTUNREACH instead of vanishing.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as error:
        sock.close(linger=0)
        raise OSError(f"cannot bind {endpoint}: {error}") from error
    bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    return _track(sock, f"ROUTER {bound}"), bound


def connect_dealer(endpoint: str, keys: Credentials | None = None) -> zmq.Socket:
    """A DEALER connected to a peer's ROUTER (ZeroMQ connects and reconnects in the background)."""
    sock = context().socket(zmq.DEALER)
    if keys is not None:
        make_client(sock, keys)
    sock.setsockopt(zmq.LINGER, 0)
    # A peer that died is retried with backoff up to 5 s, so links to dead peers cost little.
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as error:
        sock.close(linger=0)
        raise OSError(f"cannot connect to {endpoint}: {error}") from error
    return _track(sock, f"DEALER -> {endpoint}")


CONNECTION_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def monitor(sock: zmq.Socket, events: int = CONNECTION_EVENTS | HANDSHAKE_FAILURES) -> zmq.Socket:
    """A socket that receives `sock`'s `events` (by default connect, disconnect and
    failed handshakes).

    libzmq emits monitor events from its I/O thread with a blocking send: if the
    monitor socket stops reading (it is full, or closed while the monitored socket
    still lives), the I/O thread blocks and every connection of the process stalls.
    So the monitor socket never has a receive limit, and `close_monitored` tears
    the pair down in the one safe order.
    """
    monitor_socket = sock.get_monitor_socket(events)
    monitor_socket.setsockopt(zmq.LINGER, 0)
    monitor_socket.setsockopt(zmq.RCVHWM, 0)
    return _track(monitor_socket, "monitor")


def close_monitored(sock: LoopSocket, monitor_socket: LoopSocket) -> None:
    """Close a monitored socket and its monitor: stop the monitor first, then close both."""
    if not sock.closed:
        sock.sock.disable_monitor()
    monitor_socket.close()
    sock.close()


def parse_event(frames: list[Any]) -> int:
    """The event number of a monitor message."""
    return parse_monitor_message([bytes(frame) for frame in frames])["event"]


def parse_event_value(frames: list[Any]) -> tuple[int, int]:
    """The event number and value (a reason code for failed handshakes) of a monitor message."""
    event = parse_monitor_message([bytes(frame) for frame in frames])
    return event["event"], event["value"]


class LoopSocket:
    """A ZeroMQ socket serviced by the running event loop.

    Args:
        sock: the socket (this object owns it from now on and closes it).
        on_message: called with each received multipart message (frames
            received with ``copy=False``), synchronously from the loop.
        on_error: called if receiving or `on_message` raises; the socket stops
            reading then. The owner decides (an actor crashes).
        queue_when_full: when ZeroMQ pushes back, queue the message and send it
            later (a DEALER: one peer, whose credit bounds the queue). When False,
            `send` raises `zmq.Again` instead (a ROUTER: a reply must not wait
            behind a peer that stopped reading, and must not hold up the others).
    """

    RETRY_S = 0.01
    """While messages wait, look again this often even if no readiness edge arrives."""

    def __init__(
        self,
        sock: zmq.Socket,
        on_message: Callable[[list[zmq.Frame]], None],
        on_error: Callable[[BaseException], None],
        queue_when_full: bool = True,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.on_error = on_error
        self.queue_when_full = queue_when_full
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._waiting_sends: deque[tuple[list[Any], asyncio.Future[None]]] = deque()
        self._scheduled = False
        self._servicing = False
        """True while `on_message` runs: the service loop reads the socket's events right after."""
        self._loop.add_reader(self._fd, self._service)
        self._schedule()  # the descriptor is edge-triggered: look once even without an edge

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def send(self, frames: list[Any]) -> asyncio.Future[None] | None:
        """Send now if ZeroMQ takes the message; otherwise queue it.

        Returns:
            None when sent, or a future that completes when the queued message is sent
            (or fails with the ZMQError that refused it). Cancelling the future
            withdraws a message still waiting.

        Raises:
            zmq.ZMQError: ZeroMQ refused the message outright (for example
                EHOSTUNREACH from a ROUTER whose peer is gone, or zmq.Again
                when the socket does not queue).
        """
        if not self._waiting_sends:
            try:
                self._send_parts(frames)
            except zmq.Again:
                if not self.queue_when_full:
                    raise
            else:
                # A send can consume the descriptor's edge for incoming data: look now
                # (not for a send from `on_message`: the service loop looks next).
                if not self._servicing and self.sock.get(_EVENTS) & _POLLIN:
                    self._schedule()
                return None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiting_sends.append((frames, waiter))
        self._schedule()
        return waiter

    async def send_async(self, frames: list[Any]) -> None:
        """Send, waiting while ZeroMQ pushes back."""
        waiter = self.send(frames)
        if waiter is not None:
            await waiter

    def close(self, linger_ms: int = 0) -> None:
        """Close now; messages already handed to ZeroMQ get `linger_ms` to leave (0: dropped)."""
        if self.sock.closed:
            return
        self._loop.remove_reader(self._fd)
        while self._waiting_sends:
            _, waiter = self._waiting_sends.popleft()
            if not waiter.done():
                waiter.set_exception(zmq.ZMQError(zmq.ENOTSOCK, "socket closed before the message was sent"))
        self.sock.close(linger=linger_ms)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _send_parts(self, frames: list[Any]) -> None:
        """A non-blocking multipart send (ZeroMQ accepts all parts or, on the first, none)."""
        send = self.sock.send
        for frame in frames[:-1]:
            send(frame, _NOBLOCK_MORE, copy=False)
        send(frames[-1], _NOBLOCK, copy=False)

    def _receive_parts(self) -> list[zmq.Frame]:
        recv = self.sock.recv
        parts = [recv(_NOBLOCK, copy=False)]
        while parts[-1].more:
            parts.append(recv(_NOBLOCK, copy=False))
        return parts

    def _service(self) -> None:
        self._scheduled = False
        if self.sock.closed:
            return
        deadline = time.monotonic() + MAX_SECONDS_PER_WAKEUP
        try:
            for _ in range(MAX_MESSAGES_PER_WAKEUP):
                if time.monotonic() > deadline:
                    break
                events = self.sock.get(_EVENTS)
                if self._waiting_sends and events & _POLLOUT:
                    self._flush_sends()
                    events = self.sock.get(_EVENTS)  # sending may have consumed an edge
                if not events & _POLLIN or self.sock.closed:
                    return
                self._servicing = True
                try:
                    self.on_message(self._receive_parts())
                finally:
                    self._servicing = False
                if self.sock.closed:  # on_message may close the socket
                    return
            self._schedule()  # more may be waiting: continue after others had a turn
        except zmq.Again:
            return
        except Exception as error:  # handed to the owner, which stops: a bug must not pass silently
            self._loop.remove_reader(self._fd)
            self.on_error(error)

    def _flush_sends(self) -> None:
        while self._waiting_sends:
            frames, waiter = self._waiting_sends[0]
            if waiter.done():  # withdrawn by the sender
                self._waiting_sends.popleft()
                continue
            try:
                self._send_parts(frames)
            except zmq.Again:
                # Still full: a readiness edge or this timer retries.
                self._loop.call_later(self.RETRY_S, self._schedule)
                return
            except zmq.ZMQError as error:
                self._waiting_sends.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                continue
            self._waiting_sends.popleft()
            if not waiter.done():
                waiter.set_result(None)
