"""Topology files: which roles a run has, how many of each, and how to run them.

A topology is YAML validated by the pydantic models below (every field documented,
unknown keys refused). `load_topology` reads a file (`launch.topology_file`: keys
given twice, ``--set a.b.c=value`` overrides), validates everything (each role's
own ``config:`` block against its actor class's `Config` model too, with the
settings derived from other fields filled in) and checks that the roles fit
together (`launch.topology_checks`). It returns the topology, or raises with every
problem found, each with its field path and what to do about it
(`launch.topology_problems`); nothing is started.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from launch.topology_checks import cross_role_problems, fill_derived
from launch.topology_file import apply_overrides, read_yaml
from launch.topology_problems import Problem, TopologyError, TopologyFileError, problems_from
from runtime.settings import RuntimeSettings

__all__ = [
    "BUILTIN_ROLES", "NetworkSpec", "Problem", "RestartPolicy", "RoleSpec", "Topology", "TopologyError",
    "TopologyFileError", "apply_overrides", "load_topology", "read_yaml", "resolved", "validate",
]

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
    "environment": "roles.environment:EnvironmentRole",
    "evaluator": "roles.evaluator:HeldoutEvaluator",
}
"""Role entry points by built-in name."""

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"
DEVICE_PATTERN = re.compile(r"^(cpu|cuda:\d+)$")
NODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    node: int | str | list[int | str] = "spread"
    """Where the instances run on a Slurm cluster (`troupe launch --slurm`; local runs
    ignore it): a node index within the allocation (0 is the first node), a node name,
    or ``spread`` (instance k on node k modulo the allocation's size); or one index or
    name per instance. `troupe validate --nodes N` checks it against N nodes."""
    gpus: int = Field(0, ge=0)
    """GPUs per instance on a Slurm cluster: each job step asks for this many
    (``srun --gpus``) and Slurm sets CUDA_VISIBLE_DEVICES; 0 asks for none. Local
    runs use ``placement`` instead."""
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

    @field_validator("node")
    @classmethod
    def _known_node(cls, node: Any) -> Any:
        for position, slot in enumerate(node if isinstance(node, list) else [node]):
            where = f"instance {position}: " if isinstance(node, list) else ""
            if isinstance(slot, int) and slot < 0:
                raise ValueError(f"{where}node index {slot} is negative; indices count from 0")
            if isinstance(slot, str) and not NODE_PATTERN.match(slot):
                raise ValueError(f"{where}{slot!r} is not a node name; write a node index, a node name or 'spread'")
            if isinstance(node, list) and slot == "spread":
                raise ValueError(f"{where}'spread' is for the whole role: write node: spread, or a node per instance")
        return node

    @model_validator(mode="after")
    def _one_node_per_instance(self) -> RoleSpec:
        if isinstance(self.node, list) and len(self.node) != self.count:
            raise ValueError(
                f"node lists {len(self.node)} instances but count is {self.count}; give one node per instance"
            )
        return self

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


def validate(raw: dict[str, Any], resolved_copy: bool = False) -> tuple[Topology | None, dict[str, Any], list[Problem]]:
    """Validate a raw topology mapping, every role's config block, and how the roles fit together.

    Args:
        raw: the topology mapping (overrides applied).
        resolved_copy: `raw` is the run directory's topology.yaml, which the launcher
            wrote with every field filled in (`resolved`): the derived settings written
            there are set again from their counts instead of being refused.

    Returns:
        (the topology or None, each role's validated config model, every problem found).
    """
    problems: list[Problem] = []
    try:
        topology: Topology | None = Topology.model_validate(raw)
    except ValidationError as error:
        topology = None
        problems += problems_from(error, (), Topology)
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
        configs[name], role_problems = _role_config(name, entry, block, roles, resolved_copy)
        problems += role_problems
    problems += cross_role_problems(roles, configs)
    return (topology if not problems else None), configs, problems


def _role_config(name: str, entry: str, block: dict[str, Any], roles: dict[str, Any],
                 resolved_copy: bool) -> tuple[Any, list[Problem]]:
    from runtime.host import load_actor_class

    try:
        cls = load_actor_class(entry)
    except Exception as error:  # any import failure is this role's problem, reported with the others
        return None, [Problem(path=f"roles.{name}.entry", message=f"cannot load {entry}: {type(error).__name__}: {error}")]
    if cls.Config is None:
        if block:
            return None, [Problem(path=f"roles.{name}.config", message=f"{entry} takes no config block; remove it")]
        return None, []
    block, problems = fill_derived(name, cls.Config, block, roles, resolved_copy)
    try:
        return cls.Config.model_validate(block), problems
    except ValidationError as error:
        return None, problems + problems_from(error, ("roles", name, "config"), cls.Config)


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
    """The topology with every default filled in, role configs included (for the run
    directory); the derived settings too, so read it back with ``validate(raw, resolved_copy=True)``."""
    data = topology.model_dump(mode="json")
    for name, config in configs.items():
        if config is not None:
            data["roles"][name]["config"] = config.model_dump(mode="json")
    return data
