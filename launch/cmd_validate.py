"""`troupe validate TOPOLOGY [--set k=v ...]`: check a topology file, list every problem, start nothing."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topology", nargs="?", help="the topology YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, e.g. --set roles.stage.count=3 (repeatable)")
    parser.add_argument("--list-roles", action="store_true", help="list the built-in role names and exit")


def run(args: argparse.Namespace) -> int:
    from launch.topology import BUILTIN_ROLES, TopologyError, TopologyFileError, load_topology

    if args.list_roles:
        for name, entry in sorted(BUILTIN_ROLES.items()):
            print(f"{name:24} {entry}")
        return 0
    if args.topology is None:
        print("troupe validate: give a topology file (or --list-roles)", file=sys.stderr)
        return 2
    try:
        topology, _ = load_topology(args.topology, args.overrides)
    except TopologyFileError as error:  # not a topology file at all: a bad argument
        print(f"troupe validate: {error}", file=sys.stderr)
        return 2
    except TopologyError as error:
        print(error, file=sys.stderr)
        return 1
    roles = ", ".join(f"{name} x{spec.count}" for name, spec in topology.roles.items())
    print(f"{args.topology}: ok: run {topology.name!r} with {roles}")
    return 0
