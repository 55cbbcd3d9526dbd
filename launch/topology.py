"""Topology files: which roles a run has, how many of each, and how to run them.

A topology is YAML validated by the pydantic models below (every field documented,
unknown keys refused). `load_topology` reads a file, applies ``--set a.b.c=value``
overrides, validates everything (each role's own ``config:`` block against its
actor class's `Config` model too, every role a config names against the
topology's roles, and keys given twice) and returns the topology together with
every problem found, each with its field path and what to do about it; nothing
is started.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.settings import RuntimeSettings

BUILTIN_ROLES: dict[str, str] = {
    "pipeline-producer": "roles.pipeline:Producer",
    "pipeline-stage": "roles.pipeline:Stage",
    "pipeline-sink": "roles.pipeline:Sink",
    "controller": "roles.controller:Controller",
    "generator": "roles.generator:Generator",
    "trainer": "roles.trainer:Trainer",
    "critic": "roles.critic:Critic",
    "reference": "roles.reference:Reference",
    "reward": "roles.reward:Reward",
    "evaluator": "roles.evaluator:HeldoutEvaluator",
}
"""Role entry points by built-in name."""

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"
DEVICE_PATTERN = re.compile(r"^(cpu|cuda:\d+)$")
ENTRY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RestartPolicy(Strict):
    """What happens when an instance's process exits with an error or stops heartbeating."""

    policy: Literal["never", "on-failure"] = "on-failure"
    """``on-failure`` restarts the instance; ``never`` stops the whole run instead."""
    max_restarts: int = Field(3, ge=0)
    """Restarts allowed per instance before the run stops as a whole."""
    backoff_s: float = Field(1.0, ge=0)
    """Delay before the first restart; it doubles with each restart of the same instance,
    up to 30 s."""


class RoleSpec(Strict):
    """One role of the topology and how its instances run."""

    entry: str
    """A built-in role name (see `troupe validate --list-roles`) or an import path
    ``package.module:ActorClass`` of your own actor class."""
    count: int = Field(1, ge=1)
    """How many instances to start (named ``<role>-0``, ``<role>-1``, ...)."""
    placement: Literal["cpu"] | list[str | list[str]] = "cpu"
    """``cpu``, or one entry per instance: a device (``cuda:N`` or ``cpu``) or a list of
    ``cuda:N`` devices for an instance that uses several. Sets CUDA_VISIBLE_DEVICES."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for this role's processes."""
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    """The restart policy of this role's instances."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The role's own settings, validated by its actor class's `Config` model."""
    ends_run: bool = False
    """When every instance of this role has exited cleanly (code 0), the run stops: for
    a role whose work defines the run (a producer, a controller)."""

    @field_validator("entry")
    @classmethod
    def _known_entry(cls, entry: str) -> str:
        if entry in BUILTIN_ROLES or ENTRY_PATTERN.match(entry):
            return entry
        close = difflib.get_close_matches(entry, BUILTIN_ROLES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"{entry!r} is neither a built-in role nor package.module:ActorClass; {hint}"
            f"built-in roles: {', '.join(sorted(BUILTIN_ROLES))}"
        )

    @field_validator("placement")
    @classmethod
    def _known_devices(cls, placement: Any) -> Any:
        if placement == "cpu":
            return placement
        for position, slot in enumerate(placement):
            devices = [slot] if isinstance(slot, str) else slot
            for device in devices:
                if not DEVICE_PATTERN.match(device):
                    raise ValueError(f"instance {position}: {device!r} is not a device; write 'cuda:N' or 'cpu'")
            if not isinstance(slot, str) and ("cpu" in slot or not slot):
                raise ValueError(f"instance {position}: a device list names one or more 'cuda:N' devices")
        return placement

    @model_validator(mode="after")
    def _one_placement_per_instance(self) -> RoleSpec:
        if self.placement != "cpu" and len(self.placement) != self.count:
            raise ValueError(
                f"placement lists {len(self.placement)} instances but count is {self.count}; "
                "give one device (or device list) per instance"
            )
        return self

    def devices(self, instance: int) -> list[str]:
        """The CUDA devices of one instance ([] for the CPU)."""
        if self.placement == "cpu":
            return []
        slot = self.placement[instance]
        devices = [slot] if isinstance(slot, str) else slot
        return [device for device in devices if device != "cpu"]


class NetworkSpec(Strict):
    """Where actors listen."""

    host: str = "127.0.0.1"
    """Address every actor binds (and the registry listens on). Anything beyond
    loopback needs ``curve: true``."""
    curve: bool = False
    """Encrypt and authenticate every connection with ZeroMQ CURVE (keys are generated
    into the run directory)."""

    @model_validator(mode="after")
    def _exposed_needs_curve(self) -> NetworkSpec:
        from runtime.security import is_loopback_endpoint

        if not is_loopback_endpoint(f"tcp://{self.host}:1") and not self.curve:
            raise ValueError(f"host {self.host!r} is beyond loopback: set curve: true so connections are authenticated")
        return self


class Topology(Strict):
    """A run: its name, where it writes, and its roles."""

    name: str = Field(pattern=NAME_PATTERN)
    """Run name: letters, digits, ``_ . -``; stamped on every log line."""
    run_dir: str | None = None
    """Run directory; default ``runs/<name>-<YYYYmmdd-HHMMSS>``. `--run-dir` overrides it."""
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    """Where actors listen, and whether connections are authenticated."""
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    """Runtime settings for every actor (deadlines, flow control, heartbeats, logging)."""
    startup_timeout_s: float = Field(120.0, gt=0)
    """How long every instance may take to register before the launch is abandoned."""
    stop_timeout_s: float = Field(30.0, gt=0)
    """How long each role gets to stop gracefully before its processes are killed."""
    start: Literal["ordered", "together"] = "ordered"
    """``ordered``: roles start one after the other, last-listed first. ``together``:
    every role that does not end the run starts at once (roles that wait for each
    other themselves, as the RL roles do), then the ones with ``ends_run``."""
    roles: dict[str, RoleSpec]
    """The roles, by name. They start in this order and stop in this order (so list
    producers first); the registry starts first and stops last."""

    @field_validator("roles")
    @classmethod
    def _named_roles(cls, roles: dict[str, RoleSpec]) -> dict[str, RoleSpec]:
        if not roles:
            raise ValueError("a topology needs at least one role")
        for name in roles:
            if not re.match(NAME_PATTERN, name) or name in ("registry", "supervisor"):
                raise ValueError(
                    f"role name {name!r} must start with a letter, use letters, digits and _ . - only, "
                    "and not be 'registry' or 'supervisor'"
                )
        return roles

    def entry_point(self, role: str) -> str:
        entry = self.roles[role].entry
        return BUILTIN_ROLES.get(entry, entry)


# ------------------------------------------------------------------ problems
class Problem(BaseModel):
    """One thing wrong with a topology."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class TopologyError(ValueError):
    """A topology with problems; `problems` lists every one."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n{lines}")


class TopologyFileError(TopologyError):
    """A file that cannot be a topology at all: unreadable, not UTF-8 text, or not a YAML mapping."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(source, [Problem(path=source, message=message)])

    def __str__(self) -> str:
        return str(self.problems[0])


def _path(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_HINTS = {
    "missing": "add it",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string (quote it if it looks like a number)",
    "dict_type": "write a mapping (key: value lines)",
    "list_type": "write a list",
    "literal_error": "use one of the values listed",
    "model_type": "write a mapping (key: value lines)",
    "model_attributes_type": "write a mapping (key: value lines)",
}


def _problems_from(error: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel]) -> list[Problem]:
    problems = []
    for item in error.errors():
        location = tuple(part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-")))
        kind = item["type"]
        message = item["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = f"unknown key{_did_you_mean(model, location)}; remove it or fix its spelling"
        elif kind in _HINTS:
            message = f"{message}; {_HINTS[kind]}"
        if kind not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), (dict, list, type(None))):
            message += f" (got {item['input']!r})"
        problems.append(Problem(path=_path(prefix + location), message=message))
    return problems


def _owner_of(model: type[BaseModel], location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that holds the last key of `location` (None if it is not a model)."""
    owner: type[BaseModel] | None = model
    parts = list(location[:-1])
    while parts and owner is not None:
        part = parts.pop(0)
        if owner is Topology and part == "roles" and parts:
            parts.pop(0)  # the role's name
            owner = RoleSpec
            continue
        field = owner.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return owner


def _did_you_mean(model: type[BaseModel], location: tuple[Any, ...]) -> str:
    """Suggest the field a misspelt key was probably meant to be."""
    owner = _owner_of(model, location)
    if owner is None or not location:
        return ""
    close = difflib.get_close_matches(str(location[-1]), list(owner.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------ overrides
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[Problem]:
    """Apply ``a.b.c=value`` overrides to the raw mapping in place; values are YAML.

    Returns the problems (bad syntax, a path through something that is not a mapping).
    """
    problems = []
    for override in overrides:
        path, separator, text = override.partition("=")
        keys = path.strip().split(".") if path.strip() else []
        if not separator or not keys or any(not key for key in keys):
            problems.append(Problem(path=f"--set {override}", message="write --set dotted.path=value, e.g. roles.stage.count=3"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            problems.append(Problem(path=f"--set {override}", message=f"the value is not valid YAML: {error}"))
            continue
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                problems.append(Problem(path=f"--set {override}", message=f"{where} is not a mapping, so it has no key {keys[depth + 1]!r}"))
                break
            node = child
        else:
            node[keys[-1]] = value
    return problems


# ------------------------------------------------------------------ loading
def read_yaml(source: Path | str) -> tuple[dict[str, Any], list[Problem]]:
    """Parse a topology file.

    Returns:
        (the mapping, every key given twice in one mapping, as problems: YAML itself
        would keep the last silently).

    Raises:
        TopologyFileError: the file cannot be read, is not UTF-8 text, or holds no mapping.
        TopologyError: the file is not valid YAML (the problem gives line and column).
    """
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TopologyFileError(str(path), f"cannot read the file: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TopologyFileError(
            str(path), f"line {line} is not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        twice = _keys_given_twice(node, (), set()) if node is not None else []
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "YAML"
        raise TopologyError(str(path), [Problem(path=where, message=f"not valid YAML: {getattr(error, 'problem', error)}")]) from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        holds = "nothing" if raw is None else f"a {type(raw).__name__}"
        raise TopologyFileError(str(path), f"holds {holds}; a topology file is a YAML mapping with 'name' and 'roles' keys")
    return raw, twice


def _keys_given_twice(node: yaml.Node, location: tuple[Any, ...], walked: set[int]) -> list[Problem]:
    """Keys that appear twice in one mapping, at any depth of a composed YAML document."""
    if id(node) in walked:  # an alias of a node already walked
        return []
    walked.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[tuple[str, str], int] = {}  # (tag, text) of each key -> the line it first appears on
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # a complex key: no field path to report
                continue
            line = key.start_mark.line + 1
            first = first_lines.get((key.tag, key.value))
            if first is None:
                first_lines[(key.tag, key.value)] = line
            else:
                where = f"on line {line}" if first == line else f"(lines {first} and {line})"
                problems.append(Problem(path=_path(location + (key.value,)),
                                        message=f"given twice {where}; YAML would keep only the last: remove one"))
            problems += _keys_given_twice(value, location + (key.value,), walked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _keys_given_twice(item, location + (index,), walked)
    return problems


def validate(raw: dict[str, Any]) -> tuple[Topology | None, dict[str, Any], list[Problem]]:
    """Validate a raw topology mapping, every role's config block, and the roles the configs name.

    Returns:
        (the topology or None, each role's validated config model, every problem found).
    """
    problems: list[Problem] = []
    try:
        topology: Topology | None = Topology.model_validate(raw)
    except ValidationError as error:
        topology = None
        problems += _problems_from(error, (), Topology)
    # Role configs are checked even when other parts failed, so one run shows everything.
    configs: dict[str, Any] = {}
    roles = raw.get("roles") if isinstance(raw.get("roles"), dict) else {}
    for name, spec in roles.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("entry"), str):
            continue
        entry = BUILTIN_ROLES.get(spec["entry"], spec["entry"])
        if spec["entry"] not in BUILTIN_ROLES and not ENTRY_PATTERN.match(entry):
            continue  # already reported as a bad entry
        block = spec.get("config", {})
        if not isinstance(block, dict):
            continue  # already reported as not a mapping
        configs[name], role_problems = _role_config(name, entry, block)
        problems += role_problems
    problems += _cross_reference_problems(roles, configs)
    return (topology if not problems else None), configs, problems


def _role_config(name: str, entry: str, block: dict[str, Any]) -> tuple[Any, list[Problem]]:
    from runtime.host import load_actor_class

    try:
        cls = load_actor_class(entry)
    except Exception as error:  # any import failure is this role's problem, reported with the others
        return None, [Problem(path=f"roles.{name}.entry", message=f"cannot load {entry}: {type(error).__name__}: {error}")]
    if cls.Config is None:
        if block:
            return None, [Problem(path=f"roles.{name}.config", message=f"{entry} takes no config block; remove it")]
        return None, []
    try:
        return cls.Config.model_validate(block), []
    except ValidationError as error:
        return None, _problems_from(error, ("roles", name, "config"), cls.Config)


# ------------------------------------------------------------------ cross-references
def _cross_reference_problems(roles: dict[str, Any], configs: dict[str, Any]) -> list[Problem]:
    """Roles that role configs name but the topology lacks, and trainer ranks that disagree.

    A config field whose name ends in ``_role`` names a role of the topology (the
    pipeline's ``stage_role``, the weight channel's ``generator_role``); the RL
    controller needs the roles `roles.controller.needed_roles` lists.
    """
    problems = []
    known = ", ".join(map(str, roles))
    for name, config in configs.items():
        if config is None:
            continue
        for location, role in _role_fields(config, ()):
            if role not in roles:
                problems.append(Problem(path=_path(("roles", name, "config", *location)),
                                        message=f"{role!r} is not a role of this topology{_close_role(role, roles)}; its roles: {known}"))
        for role, instances in _roles_needed_by(config).items():
            if role not in roles:
                problems.append(Problem(path="roles", message=(
                    f"the controller role {name!r} needs a role named {role!r} ({instances} instance{'s' if instances != 1 else ''}) "
                    f"and the topology has none{_close_role(role, roles)}; add it, or change roles.{name}.config"
                )))
    return problems + _trainer_rank_problems(roles, configs)


def _role_fields(config: BaseModel, location: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(field path, role) of every ``*_role`` string field, at any depth of a config model."""
    found = []
    for field in type(config).model_fields:
        value = getattr(config, field)
        if isinstance(value, BaseModel):
            found += _role_fields(value, (*location, field))
        elif field.endswith("_role") and isinstance(value, str):
            found.append(((*location, field), value))
    return found


def _close_role(role: str, roles: dict[str, Any]) -> str:
    close = difflib.get_close_matches(role, [str(name) for name in roles], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _roles_needed_by(config: Any) -> dict[str, int]:
    """The roles (and ready instances of each) a role needs to start: the RL controller's."""
    # A ControllerConfig exists only if a role class of this topology imported
    # roles.controller; looking it up in sys.modules spares other topologies the import.
    controller = sys.modules.get("roles.controller")
    if controller is not None and isinstance(config, controller.ControllerConfig):
        return controller.needed_roles(config)
    return {}


def _trainer_rank_problems(roles: dict[str, Any], configs: dict[str, Any]) -> list[Problem]:
    """The trainer count is written in three places; each pair that disagrees, naming both fields.

    The controller trains ranks ``trainer-0 .. trainer-<trainer_ranks - 1>``, and each
    trainer instance joins a process group of ``ranks`` members: any mismatch hangs
    or fails the run after it started.
    """
    problems = []
    # A count that is not a whole number is reported by the topology model already.
    counts = {name: spec.get("count", 1) for name, spec in roles.items() if isinstance(spec, dict)}
    trainer = sys.modules.get("roles.trainer")  # loaded if a role of this topology is a trainer (see above)
    for name, config in configs.items():
        ranks = _roles_needed_by(config).get("trainer")
        if ranks is not None and isinstance(counts.get("trainer"), int) and ranks != counts["trainer"]:
            problems.append(Problem(path=f"roles.{name}.config.trainer_ranks", message=(
                f"{ranks}, but roles.trainer.count is {counts['trainer']}; "
                "the controller trains every trainer instance: make them the same"
            )))
        count = counts.get(name)
        if trainer is not None and isinstance(config, trainer.TrainerConfig) and isinstance(count, int) and config.ranks != count:
            problems.append(Problem(path=f"roles.{name}.config.ranks", message=(
                f"{config.ranks}, but roles.{name}.count is {count}; each trainer instance is one rank: make them the same"
            )))
    return problems


def load_topology(source: Path | str, overrides: list[str] | None = None) -> tuple[Topology, dict[str, Any]]:
    """Read, override and validate a topology file.

    Returns:
        (the topology, each role's validated config model).

    Raises:
        TopologyError: listing every problem found (`TopologyFileError` when the file
            cannot be a topology at all).
    """
    raw, problems = read_yaml(source)
    problems += apply_overrides(raw, overrides or [])
    topology, configs, validation_problems = validate(raw)
    problems += validation_problems
    if problems or topology is None:
        raise TopologyError(str(source), problems)
    return topology, configs


def resolved(topology: Topology, configs: dict[str, Any]) -> dict[str, Any]:
    """The topology with every default filled in, role configs included (for the run directory)."""
    data = topology.model_dump(mode="json")
    for name, config in configs.items():
        if config is not None:
            data["roles"][name]["config"] = config.model_dump(mode="json")
    return data
