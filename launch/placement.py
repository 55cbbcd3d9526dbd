"""Where each role instance runs on a cluster: a node of the Slurm allocation.

A role's ``node`` field (`launch.topology.RoleSpec`) says it for every instance at
once, or per instance with a list:

* an integer: the node's index within the allocation (0 is the first node Slurm lists);
* a node's name (``gpu-a17``);
* ``spread`` (the default): instance k runs on node k modulo the allocation's size, so a
  role's instances go round the nodes.

Local runs ignore it. `node_problems` checks a topology against an allocation's size
(`troupe validate --nodes N`, `troupe submit --nodes N`) or its node names (`troupe
launch --slurm`, once Slurm has said them); `node_of` resolves one instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launch.topology_problems import Problem

if TYPE_CHECKING:
    from launch.topology import RoleSpec, Topology

SPREAD = "spread"


def node_slot(spec: RoleSpec, index: int) -> int | str:
    """What the topology says of instance `index`: a node index, a node name, or ``spread``."""
    return spec.node[index] if isinstance(spec.node, list) else spec.node


def node_of(spec: RoleSpec, index: int, nodes: list[str]) -> str:
    """The name of the node instance `index` runs on, among the allocation's `nodes`.

    Raises:
        ValueError: the topology names an index or a node the allocation does not have
            (`node_problems` reports the same beforehand).
    """
    slot = node_slot(spec, index)
    if slot == SPREAD:
        return nodes[index % len(nodes)]
    if isinstance(slot, int):
        if slot >= len(nodes):
            raise ValueError(f"node index {slot} is outside the allocation's {len(nodes)} nodes")
        return nodes[slot]
    if slot not in nodes:
        raise ValueError(f"node {slot!r} is not in the allocation ({', '.join(nodes)})")
    return slot


def node_problems(topology: Topology, count: int | None = None, names: list[str] | None = None) -> list[Problem]:
    """Every instance placed on a node an allocation of `count` nodes (or of the nodes
    `names`) lacks, each with its field path and what to do."""
    if names is not None:
        count = len(names)
    problems: list[Problem] = []
    for role, spec in topology.roles.items():
        path = f"roles.{role}.node"
        for index in range(spec.count):
            slot = node_slot(spec, index)
            where = f"{path}[{index}]" if isinstance(spec.node, list) else path
            if isinstance(slot, int) and count is not None and slot >= count:
                problems.append(Problem(path=where, message=(
                    f"node index {slot}, but the allocation has {count} node{'s' if count != 1 else ''} "
                    f"(indices 0..{count - 1}); ask for more nodes or place the instance on another")))
            elif isinstance(slot, str) and slot != SPREAD and names is not None and slot not in names:
                problems.append(Problem(path=where, message=(
                    f"node {slot!r} is not in the allocation ({', '.join(names)}); name one of those, "
                    "or give a node index")))
            if not isinstance(spec.node, list) and problems and problems[-1].path == where:
                break  # one line per role when every instance has the same placement
    return problems
