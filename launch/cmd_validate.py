"""`troupe validate TOPOLOGY [--set k=v ...] [--nodes N]`: check a topology file, list every problem, start nothing.

With ``--nodes N`` the roles' ``node`` placement is checked against an allocation of N
Slurm nodes too (`launch.placement`).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topology", nargs="?", help="the topology YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, e.g. --set roles.stage.count=3 (repeatable)")
    parser.add_argument("--nodes", type=int, default=None, metavar="N",
                        help="check the roles' node placement against an allocation of N Slurm nodes")
    parser.add_argument("--list-roles", action="store_true", help="list the built-in role names and exit")


def run(args: argparse.Namespace) -> int:
    from launch.placement import node_problems
    from launch.topology import BUILTIN_ROLES, TopologyError, TopologyFileError, load_topology

    if args.list_roles:
        for name, entry in sorted(BUILTIN_ROLES.items()):
            print(f"{name:24} {entry}")
        return 0
    if args.topology is None:
        print("troupe validate: give a topology file (or --list-roles)", file=sys.stderr)
        return 2
    if args.nodes is not None and args.nodes < 1:
        print("troupe validate: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        topology, _ = load_topology(args.topology, args.overrides)
        if args.nodes is not None and (problems := node_problems(topology, args.nodes)):
            raise TopologyError(args.topology, problems)
    except TopologyFileError as error:  # not a topology file at all: a bad argument
        print(f"troupe validate: {error}", file=sys.stderr)
        return 2
    except TopologyError as error:
        print(error, file=sys.stderr)
        return 1
    roles = ", ".join(f"{name} x{spec.count}" for name, spec in topology.roles.items())
    on_nodes = f" on {args.nodes} node{'s' if args.nodes != 1 else ''}" if args.nodes is not None else ""
    print(f"{args.topology}: ok: run {topology.name!r} with {roles}{on_nodes}")
    return 0
