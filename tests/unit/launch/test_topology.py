"""Topology files: validation reports every problem with its path, overrides, resolution."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from launch.topology import TopologyError, apply_overrides, load_topology, resolved, validate

GOOD = """
name: pipeline
roles:
  producer:
    entry: pipeline-producer
    ends_run: true
    config: {items: 10}
  stage:
    entry: pipeline-stage
    count: 2
  sink:
    entry: roles.pipeline:Sink
"""


def write(tmp_path, text: str):
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(raw: dict) -> list[str]:
    return [str(problem) for problem in validate(raw)[2]]


def test_a_good_topology_validates_and_fills_every_default(tmp_path):
    topology, configs = load_topology(write(tmp_path, GOOD))
    assert [name for name in topology.roles] == ["producer", "stage", "sink"]
    assert topology.roles["stage"].count == 2 and topology.roles["sink"].count == 1
    assert topology.entry_point("producer") == "roles.pipeline:Producer"
    assert configs["producer"].items == 10 and configs["producer"].in_flight == 8
    full = resolved(topology, configs)
    assert full["roles"]["producer"]["config"]["in_flight"] == 8
    assert full["roles"]["stage"]["restart"] == {"policy": "on-failure", "max_restarts": 3, "backoff_s": 1.0}
    assert full["runtime"]["heartbeat_timeout_s"] == 5.0
    assert yaml.safe_load(yaml.safe_dump(full)) == full


def test_every_kind_of_mistake_is_reported_at_once_with_its_path():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["stage"]["countt"] = 3                      # unknown key
    raw["roles"]["stage"]["count"] = 0                       # count 0
    raw["roles"]["sink"]["count"] = "two"                    # wrong type
    raw["roles"]["producer"]["placement"] = ["gpu:0"]        # bad device
    raw["roles"]["producer"]["config"]["items"] = -1         # bad role config value
    raw["roles"]["needs"] = {"entry": "tests.component.actors:NeedsSettings"}  # missing role config
    raw["netwrok"] = {}
    found = problems_of(raw)
    expected = [
        "roles.stage.countt: unknown key (did you mean 'count'?)",
        "roles.stage.count: Input should be greater than or equal to 1",
        "roles.sink.count: Input should be a valid integer",
        "roles.producer.placement: instance 0: 'gpu:0' is not a device; write 'cuda:N' or 'cpu'",
        "roles.producer.config.items: Input should be greater than or equal to 1",
        "roles.needs.config.model_dir: Field required; add it",
        "netwrok: unknown key (did you mean 'network'?)",
    ]
    for text in expected:
        assert any(problem.startswith(text) for problem in found), (text, found)
    assert len(found) == len(expected), found


def test_a_role_entry_that_does_not_exist_or_does_not_load_is_named():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["stage"]["entry"] = "pipeline-stag"
    raw["roles"]["sink"]["entry"] = "no.such.module:Sink"
    found = problems_of(raw)
    assert any(p.startswith("roles.stage.entry: 'pipeline-stag' is neither") and "did you mean 'pipeline-stage'" in p for p in found)
    assert any(p.startswith("roles.sink.entry: cannot load no.such.module:Sink: ModuleNotFoundError") for p in found)


def test_placement_needs_one_device_entry_per_instance():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["stage"]["placement"] = ["cuda:0"]
    assert any("placement lists 1 instances but count is 2" in p for p in problems_of(raw))
    raw["roles"]["stage"]["placement"] = ["cuda:0", ["cuda:1", "cuda:2"]]
    assert problems_of(raw) == []


def test_binding_beyond_loopback_requires_curve():
    raw = yaml.safe_load(GOOD)
    raw["network"] = {"host": "0.0.0.0"}
    assert problems_of(raw) == ["network: host '0.0.0.0' is beyond loopback: set curve: true so connections are authenticated"]
    raw["network"]["curve"] = True
    assert problems_of(raw) == []


def test_a_config_block_for_an_actor_without_config_is_refused():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["echo"] = {"entry": "tests.component.actors:Echoer", "config": {"x": 1}}
    assert "roles.echo.config: tests.component.actors:Echoer takes no config block; remove it" in problems_of(raw)


def test_overrides_set_nested_values_parsed_as_yaml():
    raw = yaml.safe_load(GOOD)
    assert apply_overrides(raw, ["roles.stage.count=3", "roles.producer.config.items=50",
                                 "runtime.heartbeat_timeout_s=2.5", "roles.sink.env.MODE=fast"]) == []
    assert raw["roles"]["stage"]["count"] == 3
    assert raw["roles"]["producer"]["config"]["items"] == 50
    assert raw["runtime"] == {"heartbeat_timeout_s": 2.5}
    assert raw["roles"]["sink"]["env"] == {"MODE": "fast"}


def test_bad_overrides_are_reported_with_the_rest(tmp_path):
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, GOOD), ["roles.stage.count=0", "no-equals-sign", "name.first=x", "=3"])
    text = str(caught.value)
    assert "4 problems" in text
    assert "--set no-equals-sign: write --set dotted.path=value" in text
    assert "--set name.first=x: name is not a mapping" in text
    assert "--set =3: write --set dotted.path=value" in text
    assert "roles.stage.count: Input should be greater than or equal to 1" in text


def test_yaml_syntax_errors_give_line_and_column(tmp_path):
    with pytest.raises(TopologyError, match=r"line \d+, column \d+: not valid YAML"):
        load_topology(write(tmp_path, "name: x\nroles:\n  a: [unclosed\n"))


def test_a_file_that_is_not_a_mapping_or_does_not_exist_is_refused(tmp_path):
    with pytest.raises(TopologyError, match="a topology file is a YAML mapping"):
        load_topology(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(TopologyError, match="cannot read the file"):
        load_topology(tmp_path / "missing.yaml")


def test_role_names_are_checked():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["registry"] = {"entry": "pipeline-sink"}
    assert any("role name 'registry'" in p for p in problems_of(raw))
