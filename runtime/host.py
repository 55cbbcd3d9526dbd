"""The entry point of an actor process: ``python -m runtime.host``.

    python -m runtime.host --actor package.module:ActorClass --name stage-0 \
        [--role stage] [--instance 0] [--bind tcp://127.0.0.1:*] [--registry ENDPOINT] \
        [--run NAME] [--run-dir DIR] [--options JSON] [--settings JSON] [--ready-fd FD] \
        [--ready-file PATH] [--no-parent-death]

It builds the actor, serves it until SIGTERM/SIGINT (a graceful stop) and exits
0; a crashed actor (a failed tell handler) exits 1; bad arguments exit 2. Once
the actor serves, one JSON line ``{"name", "endpoint", "pid"}`` is written to the
ready file descriptor, or to the ready file (written whole, then renamed into
place: a process started on another node, as a Slurm job step, has no pipe to its
launcher but shares the run directory). The process asks the kernel to send it
SIGTERM if its parent dies, so a killed launcher leaves no orphans; a job step's
parent is Slurm's step daemon, which ends the step itself (``--no-parent-death``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any

from runtime.actor import Actor, ActorCrashed
from runtime.settings import RuntimeSettings
from runtime.transport import flush_on_exit

EXIT_CRASHED = 1
EXIT_BAD_ARGUMENTS = 2
_PR_SET_PDEATHSIG = 1


def load_actor_class(target: str) -> type[Actor]:
    """Import ``package.module:ClassName`` and check it is an Actor subclass."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"actor {target!r} must be written package.module:ClassName")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise ValueError(f"{target} is not a subclass of runtime.actor.Actor")
    return cls


def validate_role_config(cls: type[Actor], block: dict[str, Any]) -> Any:
    """The actor class's Config model built from a topology's config block."""
    if cls.Config is None:
        if block:
            raise ValueError(f"{cls.__qualname__} takes no config block, got keys {sorted(block)}")
        return None
    return cls.Config.model_validate(block)


def die_with_parent() -> None:
    """SIGTERM this process when its parent exits (Linux); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_event_loop(main: Any, settings: RuntimeSettings) -> Any:
    """Run `main()` on uvloop when configured and installed, else on asyncio."""
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # optional speed-up only
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())


def serve(actor: Actor, endpoint: str, registry: str | None, ready_fd: int | None, ready_file: str | None = None) -> int:
    """Run `actor` in this process until a signal stops it; returns the exit code."""

    def announce(ready: Actor) -> None:
        line = json.dumps({"name": ready.name, "endpoint": ready.endpoint, "pid": os.getpid()}) + "\n"
        if ready_file is not None:
            partial = f"{ready_file}.{os.getpid()}.partial"
            with open(partial, "w") as file:
                file.write(line)
            os.replace(partial, ready_file)  # whole or absent, to a reader on another node too
        if ready_fd is not None:
            os.write(ready_fd, line.encode())
            os.close(ready_fd)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, actor.stop)
        await actor.run(endpoint, registry=registry, on_ready=announce)

    try:
        run_event_loop(main, actor.settings)
    except ActorCrashed:
        traceback.print_exc()
        return EXIT_CRASHED
    finally:
        flush_on_exit(actor.settings.stop_linger_s)  # the process ends with os._exit: no IO thread after it
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.host", description="Run one actor in this process.")
    parser.add_argument("--actor", required=True, help="package.module:ActorClass")
    parser.add_argument("--name", required=True)
    parser.add_argument("--role", default=None)
    parser.add_argument("--instance", type=int, default=0)
    parser.add_argument("--bind", default="tcp://127.0.0.1:*")
    parser.add_argument("--registry", default=None, help="the registry's endpoint")
    parser.add_argument("--run", default="")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--config", default=None, help="JSON object: the role's config block, validated by ActorClass.Config")
    parser.add_argument("--options", default="{}", help="JSON object of keyword arguments for the actor class")
    parser.add_argument("--settings", default="{}", help="JSON object of RuntimeSettings fields")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--ready-file", default=None, help="write the ready line to this file (a job step)")
    parser.add_argument("--no-parent-death", action="store_true",
                        help="do not ask for SIGTERM when the parent exits (the parent is not the launcher)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_parent_death:
        die_with_parent()
    try:
        cls = load_actor_class(args.actor)
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("--options must be a JSON object")
        settings = RuntimeSettings.model_validate_json(args.settings)
        config = validate_role_config(cls, json.loads(args.config)) if args.config is not None else None
        if config is not None:
            options["config"] = config
        actor = cls(
            args.name, role=args.role, instance=args.instance, settings=settings,
            run=args.run, run_dir=args.run_dir, **options,
        )
    except Exception as error:  # report any construction problem as bad arguments, with the reason
        print(f"runtime.host: cannot start {args.actor} as {args.name}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return serve(actor, args.bind, args.registry, args.ready_fd, args.ready_file)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit now: a compute call still running on the worker thread (which cannot be
    # interrupted) would otherwise hold the process until it finishes.
    os._exit(code)
