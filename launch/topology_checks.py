"""Checks across the roles of a topology: do they fit together? Run before anything starts.

Each role's config is valid on its own once its model accepts it; these checks
read several roles at once and report every mismatch with its field path, so
`troupe validate` lists them all instead of a run hanging or failing an hour in:

* a config field named ``*_role`` names a role of the topology (the pipeline's
  ``stage_role``, the weight channel's ``generator_role``);
* the RL controller has the roles it asks (`roles.controller_config.needed_roles`): a
  critic when its estimator needs values (gae) and ``use_critic`` is not false, a
  reference when it uses one, the trainer, generator, reward and evaluator roles;
* settings derived from another field are not written but filled in
  (`fill_derived`): the trainer rank count is said once, as the trainer role's
  ``count``;
* the trainer and every generator role it publishes to agree on the weight
  channel's backend, bucket size and publisher;
* every data source of the prompts, training and held-out, has a reward function.

The RL config classes are looked up in ``sys.modules``: a config of one of them
exists only when a role class of this topology imported its module, and looking
them up there spares a pipeline topology the import of torch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from launch.topology_problems import Problem, close_name, field_path

CHANNEL_SETTINGS_THAT_AGREE = ("backend", "bucket_mb", "publisher")
"""Weight channel fields the publishing trainer and its generator roles must share."""


def cross_role_problems(roles: dict[str, Any], configs: dict[str, Any]) -> list[Problem]:
    """Every problem between the roles of a topology (see the module docstring).

    Args:
        roles: the raw ``roles`` mapping of the topology file.
        configs: each role's validated config model (None where it did not validate).
    """
    configs = {name: config for name, config in configs.items() if config is not None}
    return (_role_name_problems(roles, configs) + _needed_role_problems(roles, configs)
            + _channel_problems(configs) + _lora_problems(configs) + _reward_problems(configs))


# ------------------------------------------------------------------ roles named in configs
def _fields(config: BaseModel, location: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(field path, value) of every field at any depth of a config model."""
    for field in type(config).model_fields:
        value = getattr(config, field)
        yield (*location, field), value
        if isinstance(value, BaseModel):
            yield from _fields(value, (*location, field))


def _role_name_problems(roles: dict[str, Any], configs: dict[str, Any]) -> list[Problem]:
    """Roles that a ``*_role`` config field names and the topology lacks."""
    problems = []
    known = ", ".join(map(str, roles))
    for name, config in configs.items():
        for location, role in _fields(config):
            if location[-1].endswith("_role") and isinstance(role, str) and role not in roles:
                problems.append(Problem(path=field_path(("roles", name, "config", *location)),
                                        message=f"{role!r} is not a role of this topology{close_name(role, roles)}; its roles: {known}"))
    return problems


def _needed_role_problems(roles: dict[str, Any], configs: dict[str, Any]) -> list[Problem]:
    """Roles the RL controller asks that the topology lacks."""
    controller = sys.modules.get("roles.controller_config")
    problems = []
    for name, config in configs.items():
        if controller is None or not isinstance(config, controller.ControllerConfig):
            continue
        for role, instances in controller.needed_roles(config).items():
            if role not in roles:
                problems.append(Problem(path="roles", message=(
                    f"the controller role {name!r} needs a role named {role!r} ({instances} instance{'s' if instances != 1 else ''}) "
                    f"and the topology has none{close_name(role, roles)}; add it, or change roles.{name}.config"
                )))
    return problems


# ------------------------------------------------------------------ derived settings
def derived_fields(config_class: type[BaseModel], role: str) -> dict[str, str]:
    """The fields of a role's config that the launcher sets, each with the role whose
    ``count`` it is.

    A trainer instance is one rank of its role, so its ``ranks`` is its own role's
    count; the controller trains the instances of the role named ``trainer`` (it asks
    ``trainer-0`` .. ``trainer-<trainer_ranks - 1>``).
    """
    trainer, controller = sys.modules.get("roles.trainer"), sys.modules.get("roles.controller_config")
    derived = {}
    if trainer is not None and issubclass(config_class, trainer.TrainerConfig):
        derived["ranks"] = role
    if controller is not None and issubclass(config_class, controller.ControllerConfig):
        derived["trainer_ranks"] = "trainer"
    return derived


def fill_derived(role: str, config_class: type[BaseModel], block: dict[str, Any], roles: dict[str, Any],
                 resolved_copy: bool = False) -> tuple[dict[str, Any], list[Problem]]:
    """A role's config block with its derived fields set from the counts they derive from.

    Args:
        role: the role's name.
        config_class: the role's config model.
        block: the role's ``config:`` mapping as written.
        roles: the raw ``roles`` mapping of the topology.
        resolved_copy: `block` comes from the run directory's topology.yaml, which the
            launcher wrote with every field filled in: derived fields written there are
            replaced, not refused.

    Returns:
        (the block to validate, a problem for each derived field the user wrote with a
        value other than the count: a value said twice could disagree, so only the
        count's own value is accepted, as topology files before the derivation wrote it).
    """
    problems = []
    filled = dict(block)
    for field, source in derived_fields(config_class, role).items():
        spec = roles.get(source)
        count = spec.get("count", 1) if isinstance(spec, dict) else None
        if field in block and block[field] != count and not resolved_copy:
            problems.append(Problem(path=f"roles.{role}.config.{field}", message=(
                f"{block[field]!r}, but it is derived from roles.{source}.count ({count!r}; the launcher sets it "
                f"for every instance): remove it; the number of trainer ranks is roles.{source}.count"
            )))
        filled.pop(field, None)
        # A count that is not a whole number >= 1 is reported by the topology model; the default stands in.
        if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
            filled[field] = count
    return filled, problems


# ------------------------------------------------------------------ weight channel
def _channel_problems(configs: dict[str, Any]) -> list[Problem]:
    """Generator roles whose weight channel settings differ from their publisher's.

    The publishing role is the one whose channel's ``generator_role`` names another
    role with a channel (the trainer); a generator that does not join the channel
    (``join_channel: false``) is left alone.
    """
    weights = sys.modules.get("runtime.weights.config")
    if weights is None:
        return []
    channels = {name: config.channel for name, config in configs.items()
                if isinstance(getattr(config, "channel", None), weights.WeightChannelConfig)}
    problems = []
    for publisher, channel in channels.items():
        receiver = channel.generator_role
        if receiver == publisher or receiver not in channels or getattr(configs[receiver], "join_channel", True) is False:
            continue
        for field in CHANNEL_SETTINGS_THAT_AGREE:
            theirs, ours = getattr(channels[receiver], field), getattr(channel, field)
            if theirs != ours:
                problems.append(Problem(path=f"roles.{receiver}.config.channel.{field}", message=(
                    f"{theirs!r}, but roles.{publisher}.config.channel.{field} is {ours!r}; "
                    f"roles.{publisher} publishes the weights to this role over one channel: make them the same"
                )))
    return problems


def _lora_problems(configs: dict[str, Any]) -> list[Problem]:
    """A LoRA trainer's generators without the same adapter settings (the channel sends
    them the adapter alone, which they apply to their base weights), and a controller
    that takes reference log-probs from a trainer with no adapter to disable."""
    problems = []
    for publisher, config in configs.items():
        channel = getattr(config, "channel", None)
        receiver = getattr(channel, "generator_role", None)
        if "lora" not in type(config).model_fields or receiver in (None, publisher) or receiver not in configs:
            continue
        theirs = getattr(configs[receiver], "lora", None)
        if getattr(configs[receiver], "join_channel", True) is not False and theirs != config.lora:
            problems.append(Problem(path=f"roles.{receiver}.config.lora", message=(
                f"{_lora_text(theirs)}, but roles.{publisher}.config.lora is {_lora_text(config.lora)}; the channel sends "
                f"{'the adapter alone' if config.lora else 'every weight'}: give both roles the same lora settings"
            )))
    for name, config in configs.items():
        if getattr(config, "reference_from", None) == "trainer" and getattr(configs.get("trainer"), "lora", None) is None:
            problems.append(Problem(path=f"roles.{name}.config.reference_from", message=(
                "'trainer', but roles.trainer.config has no lora: the reference from the trainer is its base model "
                "with the adapter disabled; set roles.trainer.config.lora, or reference_from: reference with a reference role"
            )))
    return problems


def _lora_text(settings: BaseModel | None) -> str:
    return "not set" if settings is None else repr(settings.model_dump())


# ------------------------------------------------------------------ rewards per data source
def _reward_problems(configs: dict[str, Any]) -> list[Problem]:
    """Data sources of the prompts that the reward role has no function for.

    Every prompt set of the topology (any `DataConfig` at any depth of a role's
    config: the controller's training and held-out data, the evaluator's) is scored
    by the role named ``reward``. The sources are read from the rows of the data files
    that exist here; a file that does not exist yet (built after validation, or on
    another host) or does not read is left to the role that loads it to report.
    """
    data, rewards = sys.modules.get("roles.data"), sys.modules.get("roles.rewards.config")
    reward = configs.get("reward")
    functions = getattr(reward, "rewards", None)
    if data is None or rewards is None or not isinstance(functions, rewards.RewardsConfig) or functions.default is not None:
        return []
    missing: dict[str, list[str]] = {}  # data source -> where its rows are
    for name, config in configs.items():
        for location, value in _fields(config):
            if not isinstance(value, data.DataConfig):
                continue
            for file in value.files:
                try:
                    sources = data.file_data_sources(Path(file), value)
                except data.DataError:  # missing or malformed: the role that loads it says which and where
                    continue
                for source, row in sources.items():
                    if source not in functions.by_data_source:
                        missing.setdefault(source, []).append(f"{row}, in {field_path(('roles', name, 'config', *location))}")
    return [
        Problem(path="roles.reward.config.rewards.by_data_source", message=(
            f"no reward function for data source {source!r} (first row: {'; '.join(rows)}); "
            "add it here, or set roles.reward.config.rewards.default"
        ))
        for source, rows in missing.items()
    ]
