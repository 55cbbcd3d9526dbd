"""Node placement (`roles.<name>.node`): resolved per instance, checked against an allocation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from launch.cli import main
from launch.placement import node_of, node_problems
from launch.topology import RoleSpec, Topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NODES = ["gpu-a", "gpu-b", "gpu-c"]


def topology(**roles: dict) -> Topology:
    return Topology.model_validate({"name": "t", "roles": {name: {"entry": "pipeline-stage", **spec} for name, spec in roles.items()}})


def test_spread_instances_go_round_the_allocation_in_slurm_order() -> None:
    spec = RoleSpec(entry="generator", count=5)
    assert [node_of(spec, index, NODES) for index in range(5)] == ["gpu-a", "gpu-b", "gpu-c", "gpu-a", "gpu-b"]


def test_an_index_or_a_name_places_every_instance_or_one_each() -> None:
    assert node_of(RoleSpec(entry="trainer", count=2, node=1), 1, NODES) == "gpu-b"
    assert node_of(RoleSpec(entry="trainer", node="gpu-c"), 0, NODES) == "gpu-c"
    per_instance = RoleSpec(entry="generator", count=2, node=[2, "gpu-a"])
    assert [node_of(per_instance, index, NODES) for index in range(2)] == ["gpu-c", "gpu-a"]


def test_indices_beyond_the_allocation_are_reported_with_their_field_path() -> None:
    problems = node_problems(topology(trainer={"node": 3, "count": 2}, generator={"count": 2, "node": [0, 2]}), count=2)
    assert [str(problem) for problem in problems] == [
        "roles.trainer.node: node index 3, but the allocation has 2 nodes (indices 0..1); "
        "ask for more nodes or place the instance on another",
        "roles.generator.node[1]: node index 2, but the allocation has 2 nodes (indices 0..1); "
        "ask for more nodes or place the instance on another",
    ]
    assert node_problems(topology(trainer={"node": 1}, generator={"count": 9}), count=2) == []


def test_node_names_are_checked_once_slurm_has_named_the_nodes() -> None:
    placed = topology(trainer={"node": "gpu-z"})
    assert node_problems(placed, count=3) == []  # names are unknown before the allocation exists
    (problem,) = node_problems(placed, names=NODES)
    assert problem.path == "roles.trainer.node" and "'gpu-z' is not in the allocation (gpu-a, gpu-b, gpu-c)" in problem.message


@pytest.mark.parametrize(("node", "count", "message"), [
    (-1, 1, "node index -1 is negative"),
    ("two words", 1, "'two words' is not a node name"),
    ([0], 2, "node lists 1 instances but count is 2"),
    (["spread", 0], 2, "'spread' is for the whole role"),
])
def test_a_bad_node_placement_is_refused_with_what_to_write(node, count, message) -> None:
    with pytest.raises(ValidationError, match=message):
        RoleSpec(entry="generator", node=node, count=count)


def test_validate_with_nodes_checks_placement_and_local_validation_ignores_it(tmp_path: Path, capsys) -> None:
    raw = yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text())
    raw["roles"]["sink"]["node"] = 2
    path = tmp_path / "placed.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--nodes", "3"]) == 0
    assert "on 3 nodes" in capsys.readouterr().out
    assert main(["validate", str(path), "--nodes", "2"]) == 1
    assert "roles.sink.node: node index 2, but the allocation has 2 nodes" in capsys.readouterr().err
