"""The `troupe` command line.

Each subcommand lives in its own module under `launch/` (``launch/cmd_<name>.py``)
and exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them. A module that sets ``PASSES_UNKNOWN_OPTIONS = True`` (`troupe submit`) gets the
options it does not know in ``args.passed_options`` instead of an error (they are sbatch's).
Command modules keep heavy imports (torch, the runtime) inside
``run`` so that building the parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("launch.cmd_validate", "check a topology file and list every problem"),
    "launch": ("launch.cmd_launch", "start a run from a topology file"),
    "submit": ("launch.cmd_submit", "submit a run to Slurm as a batch job (troupe launch --slurm)"),
    "ps": ("launch.cmd_ps", "list the live actors of a run"),
    "attach": ("launch.cmd_attach", "add role processes to a running topology"),
    "stop": ("launch.cmd_stop", "stop one instance or the whole run"),
    "logs": ("launch.cmd_logs", "inspect the structured message logs of a run"),
    "eval": ("launch.cmd_eval", "evaluate a model or a run's checkpoint on a held-out set"),
    "report": ("launch.cmd_report", "trend plots, health alerts and an HTML report of a run"),
    "compare": ("launch.cmd_compare", "A/B table across runs"),
    "export": ("launch.cmd_export", "a run's policy as a Hugging Face directory"),
    "serve": ("launch.cmd_serve", "serve a model over HTTP (FastAPI, dynamic batching)"),
    "loadtest": ("launch.cmd_loadtest", "load-test a served model with locust"),
}


def package_version() -> str:
    """The installed version of troupe-rl."""
    try:
        return metadata.version("troupe-rl")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="troupe",
        description="RL post-training for LLMs as an actor-model message-passing runtime.",
    )
    parser.add_argument("--version", action="version", version=f"troupe {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(module=module)
        try:
            loaded = importlib.import_module(module)
            if getattr(loaded, "PASSES_UNKNOWN_OPTIONS", False):
                command.allow_abbrev = False  # --node must reach sbatch, not be read as --nodes
            loaded.add_arguments(command)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            command.set_defaults(missing=True)  # not built yet
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command is None or not getattr(importlib.import_module(args.module), "PASSES_UNKNOWN_OPTIONS", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.passed_options = unknown
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "missing", False):
        parser.error(f"the {args.command} command is not available in this build")
    return int(importlib.import_module(args.module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
