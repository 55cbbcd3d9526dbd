"""Topology files: validation reports every problem with its path, overrides, resolution."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

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


# ------------------------------------------------------------------ cross-references
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_every_example_topology_validates():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert problems_of(yaml.safe_load(path.read_text())) == [], path.name


RECIPES = ["grpo", "dr-grpo", "dapo", "gspo", "cispo", "rloo", "reinforce-plus-plus", "ppo"]
"""The named recipes of issue 18, one file each in examples/recipes/."""


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_file_validates_and_cites_its_paper(recipe: str):
    path = EXAMPLES / "recipes" / f"{recipe}.yaml"
    assert problems_of(yaml.safe_load(path.read_text())) == [], path.name
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert re.search(r"(arXiv:\d{4}\.\d{4,5}|\b20\d\d\b)", header), f"{path.name} cites no paper in its header"


def test_the_recipe_folder_holds_exactly_the_named_recipes():
    assert sorted(path.stem for path in (EXAMPLES / "recipes").glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_the_example_topologies_are_their_recipes_under_another_name(algorithm: str):
    """`make demo` runs examples/arith-<algorithm>.yaml and the end-to-end tests run the
    recipe: they must stay one topology."""
    example_topology = example(f"arith-{algorithm}.yaml")
    recipe = yaml.safe_load((EXAMPLES / "recipes" / f"{algorithm}.yaml").read_text())
    assert example_topology.pop("name") == f"arith-{algorithm}" and recipe.pop("name") == algorithm
    assert example_topology == recipe


@pytest.mark.parametrize("role", ["trainer", "reference"])  # grpo's reference: use_reference is true, kl.usage loss
def test_an_rl_controller_without_a_role_it_asks_is_refused_before_anything_starts(role):
    raw = example("arith-grpo.yaml")
    del raw["roles"][role]
    assert problems_of(raw) == [
        f"roles: the controller role 'controller' needs a role named {role!r} (1 instance) and the topology has none; "
        "add it, or change roles.controller.config"
    ]


def test_the_roles_a_controller_needs_follow_its_config():
    ppo = example("arith-ppo.yaml")
    del ppo["roles"]["critic"]  # gae needs values
    assert any(p.startswith("roles: the controller role 'controller' needs a role named 'critic'") for p in problems_of(ppo))
    ppo["roles"]["controller"]["config"]["advantage"] = {"type": "grpo"}
    ppo["roles"]["controller"]["config"]["use_reference"] = False
    ppo["roles"]["controller"]["config"]["kl"] = {"usage": "none"}
    del ppo["roles"]["reference"]
    assert problems_of(ppo) == []
    grpo = example("arith-grpo.yaml")  # eval.evaluator: true
    grpo["roles"]["evaluators"] = grpo["roles"].pop("evaluator")
    assert any(p.startswith("roles: the controller role 'controller' needs a role named 'evaluator'")
               and "did you mean 'evaluators'?" in p for p in problems_of(grpo))


def test_gae_needs_no_critic_when_use_critic_is_false():
    ppo = example("arith-ppo.yaml")
    del ppo["roles"]["critic"]
    ppo["roles"]["controller"]["config"]["use_critic"] = False
    assert problems_of(ppo) == []


# ------------------------------------------------------------------ derived settings
def test_a_written_trainer_rank_count_other_than_the_count_is_refused_at_its_field_path():
    raw = example("arith-grpo.yaml")
    raw["roles"]["controller"]["config"]["trainer_ranks"] = 2  # two places that could disagree with the count
    raw["roles"]["trainer"]["config"]["ranks"] = 3
    assert problems_of(raw) == [
        "roles.controller.config.trainer_ranks: 2, but it is derived from roles.trainer.count (1; the launcher sets it "
        "for every instance): remove it; the number of trainer ranks is roles.trainer.count",
        "roles.trainer.config.ranks: 3, but it is derived from roles.trainer.count (1; the launcher sets it "
        "for every instance): remove it; the number of trainer ranks is roles.trainer.count",
    ]


def test_a_topology_written_before_the_derivation_with_the_counts_own_value_still_validates():
    raw = example("arith-grpo.yaml")
    raw["roles"]["trainer"]["count"] = 2
    raw["roles"]["controller"]["config"]["trainer_ranks"] = 2  # as examples/*.yaml wrote it before
    raw["roles"]["trainer"]["config"]["ranks"] = 2
    topology, configs, problems = validate(raw)
    assert problems == [] and configs["trainer"].ranks == 2 and configs["controller"].trainer_ranks == 2


def test_a_token_budget_with_several_trainer_ranks_validates():  # the ranks agree on a micro-batch count (roles.update)
    raw = example("arith-grpo.yaml")
    raw["roles"]["trainer"]["count"] = 2
    raw["roles"]["trainer"]["config"]["update"]["max_tokens_per_micro_batch"] = 4096
    assert problems_of(raw) == []


def test_an_override_of_a_derived_setting_is_refused_too(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(example("arith-grpo.yaml")))
    with pytest.raises(TopologyError) as caught:
        load_topology(path, ["roles.trainer.count=2", "roles.trainer.config.ranks=1"])
    assert [problem.path for problem in caught.value.problems] == ["roles.trainer.config.ranks"]


def test_the_trainer_count_is_filled_in_for_every_role_that_needs_it():
    raw = example("arith-grpo.yaml")
    raw["roles"]["trainer"]["count"] = 3
    topology, configs, problems = validate(raw)
    assert problems == [] and topology is not None
    assert configs["trainer"].ranks == 3
    assert configs["controller"].trainer_ranks == 3
    full = resolved(topology, configs)
    assert full["roles"]["trainer"]["config"]["ranks"] == 3 and full["roles"]["controller"]["config"]["trainer_ranks"] == 3


def test_the_run_directorys_resolved_copy_validates_again_with_its_derived_settings_set_from_the_count():
    topology, configs, _ = validate(example("arith-grpo.yaml"))
    copy = yaml.safe_load(yaml.safe_dump(resolved(topology, configs)))  # as the launcher writes and reads it
    assert validate(copy, resolved_copy=True)[2] == []
    copy["roles"]["trainer"]["count"] = 2  # the copy says ranks: 1; the count decides
    _, configs, problems = validate(copy, resolved_copy=True)
    assert problems == [] and configs["trainer"].ranks == 2 and configs["controller"].trainer_ranks == 2
    assert [problem.path for problem in validate(copy)[2]] == [  # as a user's file, it says them twice
        "roles.controller.config.trainer_ranks", "roles.trainer.config.ranks",
    ]


# ------------------------------------------------------------------ the weight channel
def test_a_generator_whose_channel_disagrees_with_the_trainers_is_refused_field_by_field():
    raw = example("arith-grpo.yaml")
    raw["roles"]["generator"]["config"]["channel"] = {"bucket_mb": 32, "backend": "nccl", "publisher": "trainer-1"}
    raw["roles"]["trainer"]["config"]["channel"] = {"bucket_mb": 64, "backend": "gloo"}
    assert problems_of(raw) == [
        "roles.generator.config.channel.backend: 'nccl', but roles.trainer.config.channel.backend is 'gloo'; "
        "roles.trainer publishes the weights to this role over one channel: make them the same",
        "roles.generator.config.channel.bucket_mb: 32.0, but roles.trainer.config.channel.bucket_mb is 64.0; "
        "roles.trainer publishes the weights to this role over one channel: make them the same",
        "roles.generator.config.channel.publisher: 'trainer-1', but roles.trainer.config.channel.publisher is "
        "'trainer-0'; roles.trainer publishes the weights to this role over one channel: make them the same",
    ]
    raw["roles"]["generator"]["config"]["join_channel"] = False  # it serves its initial weights only
    assert problems_of(raw) == []


# ------------------------------------------------------------------ rewards per data source
def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_every_data_source_of_training_and_held_out_prompts_needs_a_reward_function(tmp_path):
    raw = example("arith-grpo.yaml")  # rewards: by_data_source {arith}, no default
    train = jsonl(tmp_path / "train.jsonl", [
        {"prompt": "1+1=", "data_source": "arith"}, {"prompt": "2+2="},  # no source: the default, gsm8k
        {"prompt": "3+3=", "data_source": "gsm8k"},
    ])
    heldout = jsonl(tmp_path / "heldout.jsonl", [{"prompt": "4+4=", "data_source": "math"}])
    raw["roles"]["controller"]["config"]["data"] = {"files": [train], "default_data_source": "gsm8k"}
    raw["roles"]["evaluator"]["config"]["data"] = {"files": [heldout, str(tmp_path / "not-built-yet.jsonl")]}
    assert problems_of(raw) == [
        f"roles.reward.config.rewards.by_data_source: no reward function for data source 'gsm8k' (first row: "
        f"{train}:2, in roles.controller.config.data); add it here, or set roles.reward.config.rewards.default",
        f"roles.reward.config.rewards.by_data_source: no reward function for data source 'math' (first row: "
        f"{heldout}:1, in roles.evaluator.config.data); add it here, or set roles.reward.config.rewards.default",
    ]
    raw["roles"]["reward"]["config"]["rewards"]["default"] = {"type": "arithmetic"}
    assert problems_of(raw) == []


def test_a_config_field_naming_a_role_that_does_not_exist_is_refused_with_did_you_mean():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["producer"]["config"]["stage_role"] = "stages"
    assert problems_of(raw) == [
        "roles.producer.config.stage_role: 'stages' is not a role of this topology (did you mean 'stage'?); "
        "its roles: producer, stage, sink"
    ]


def test_a_default_role_name_that_does_not_exist_is_refused_too():
    raw = yaml.safe_load(GOOD)
    raw["roles"]["store"] = raw["roles"].pop("sink")  # the stage still sends to its default sink_role, 'sink'
    assert problems_of(raw) == [
        "roles.stage.config.sink_role: 'sink' is not a role of this topology; its roles: producer, stage, store"
    ]


# ------------------------------------------------------------------ the file itself
def test_a_key_given_twice_is_reported_at_any_depth_with_both_lines(tmp_path):
    text = """\
        name: pipeline
        roles:
          producer:
            entry: pipeline-producer
            config: {items: 10, items: 20}
          stage:
            entry: pipeline-stage
          sink:
            entry: pipeline-sink
          stage:
            entry: pipeline-stage
            count: 3
        name: other
        """
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, text))
    assert [str(problem) for problem in caught.value.problems] == [
        "roles.producer.config.items: given twice on line 5; YAML would keep only the last: remove one",
        "roles.stage: given twice (lines 6 and 10); YAML would keep only the last: remove one",
        "name: given twice (lines 1 and 13); YAML would keep only the last: remove one",
    ]


def test_a_file_that_is_not_utf8_is_one_problem_not_a_traceback(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_bytes(b"name: caf\xe9\nroles: {}\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert [str(problem) for problem in caught.value.problems] == [
        f"{path}: line 1 is not UTF-8 text (byte 0xe9); save the file as UTF-8"
    ]


def test_a_lora_example_validates_and_its_generator_must_carry_the_trainers_adapter_settings():
    raw = example("arith-grpo-lora.yaml")
    assert problems_of(raw) == []
    raw["roles"]["generator"]["config"]["lora"] = {"r": 8}
    assert [p for p in problems_of(raw) if p.startswith("roles.generator.config.lora")] == [
        "roles.generator.config.lora: {'r': 8, 'alpha': 32.0, 'dropout': 0.0, 'target_modules': 'all-linear'}, but "
        "roles.trainer.config.lora is {'r': 16, 'alpha': 32.0, 'dropout': 0.0, 'target_modules': 'all-linear'}; the "
        "channel sends the adapter alone: give both roles the same lora settings"
    ]
    del raw["roles"]["generator"]["config"]["lora"]
    assert any(p.startswith("roles.generator.config.lora: not set, but roles.trainer.config.lora") for p in problems_of(raw))


def test_the_reference_from_the_trainer_needs_a_lora_trainer():
    raw = example("arith-grpo-lora.yaml")
    del raw["roles"]["trainer"]["config"]["lora"], raw["roles"]["generator"]["config"]["lora"]
    assert problems_of(raw) == [
        "roles.controller.config.reference_from: 'trainer', but roles.trainer.config has no lora: the reference from "
        "the trainer is its base model with the adapter disabled; set roles.trainer.config.lora, or reference_from: "
        "reference with a reference role"
    ]
