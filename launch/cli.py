"""The `troupe` command line."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


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
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
