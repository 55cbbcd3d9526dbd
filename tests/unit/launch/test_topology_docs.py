"""docs/topology.md describes every field of the topology models."""

from __future__ import annotations

from pathlib import Path

from launch.topology import NetworkSpec, RestartPolicy, RoleSpec, Topology
from runtime.settings import RuntimeSettings

DOC = (Path(__file__).resolve().parents[3] / "docs" / "topology.md").read_text()


def test_every_topology_field_is_documented():
    for model in (Topology, NetworkSpec, RoleSpec, RestartPolicy, RuntimeSettings):
        for field in model.model_fields:
            assert f"`{field}`" in DOC, f"docs/topology.md does not describe {model.__name__}.{field}"
