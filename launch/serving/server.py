"""Running the service: a listening socket, uvicorn, and an exit code.

The socket is bound (and listening) before uvicorn starts, so ``--port 0`` can pick a
free port and the startup line can name it; connections that arrive during startup
wait in the backlog instead of being refused.
"""

from __future__ import annotations

import signal
import socket

import uvicorn

from launch.serving.app import create_app
from launch.serving.service import ServeConfig


def open_listener(config: ServeConfig) -> socket.socket:
    """A socket listening on ``config.host:config.port`` (raises OSError when it cannot)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    return socket.create_server((config.host, config.port), family=family, backlog=2048)


def serve(config: ServeConfig, listener: socket.socket, log_level: str = "info", access_log: bool = False) -> int:
    """Serves on `listener` until SIGINT/SIGTERM (0) or until the model fails to load or
    the batcher dies (1). Requests in flight get ``config.graceful_shutdown_s`` to finish."""
    failed = False

    def stop_server() -> None:
        nonlocal failed
        failed = True
        server.should_exit = True

    def request_stop(signum: int, frame: object) -> None:
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(
        create_app(config, stop_server), log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=config.graceful_shutdown_s,
    ))
    host, port = listener.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"troupe serve: {config.model} on http://{url_host}:{port} (the model is loading: GET /ready says when "
          f"it is up)", flush=True)
    # uvicorn handles SIGINT/SIGTERM while it serves (a graceful shutdown), then raises the
    # signal again for the handler it found: `request_stop`, so a requested stop exits 0
    # (and a signal that comes just before uvicorn takes over still stops it)
    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0
