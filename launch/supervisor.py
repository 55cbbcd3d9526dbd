"""The supervisor: one OS process per role instance, restarted by policy.

The supervisor is an actor in the launcher process. It starts every instance
(`runtime.spawn`), watches each process, and applies the role's restart policy:
an instance that exits with an error, or stops heartbeating while its process
lives on (hung: it is killed first), is restarted after a backoff under the same
name; the work it held is re-delivered by its senders (`runtime.routing`). An
instance that cannot be restarted (policy ``never``, or out of restarts) stops
the run as a whole, with a report naming it, its exit code and the last lines it
printed. The ``troupe ps/stop/attach`` commands talk to it.

Reaping an instance's process removes the shared-memory segments it owned
(`runtime.spawn`), so one killed with SIGKILL leaves nothing in /dev/shm; and a run
starts by removing those its own earlier processes left when they were killed
together with their supervisor.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.membership import MembershipEvent
from protocols.supervision import (
    Attach,
    Attached,
    InstanceStatus,
    RunStatus,
    StatusQuery,
    StopInstance,
    StopRun,
)
from launch.rundir import tail
from launch.topology import RoleSpec, Topology, apply_overrides
from runtime.actor import Actor, handler
from runtime.run_dir import RunDir
from runtime.settings import RuntimeSettings
from runtime.shm.segments import remove_orphaned_segments
from runtime.spawn import ActorProcess, SpawnError, spawn_actor

MAX_BACKOFF_S = 30.0


class StartupError(RuntimeError):
    """Instances that did not come up in time; the text names them with their last log lines."""


@dataclass
class Instance:
    """One role instance and its current process."""

    role: str
    index: int
    spec: RoleSpec
    config: dict[str, Any] | None
    attached: bool = False
    process: ActorProcess | None = None
    state: str = "starting"
    restarts: int = 0
    exit_code: int | None = None
    started_at: float = 0.0
    stop_requested: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            name=self.name, role=self.role, instance=self.index,
            pid=self.process.pid if self.process is not None and self.process.returncode is None else None,
            state=self.state, restarts=self.restarts, exit_code=self.exit_code, started_at=self.started_at,
            attached=self.attached,
        )


class Supervisor(Actor):
    """Starts, watches, restarts and stops the instances of a run."""

    role = "supervisor"

    def __init__(
        self,
        name: str,
        *,
        topology: Topology,
        configs: dict[str, Any],
        registry_endpoint: str,
        notify: Callable[[str], None] = print,
        spawn: Callable[..., Awaitable[Any]] = spawn_actor,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.topology = topology
        self.configs = {role: (c.model_dump(mode="json") if c is not None else None) for role, c in configs.items()}
        self.registry_endpoint = registry_endpoint
        self.notify = notify
        self.spawn = spawn
        """How an instance's process starts: `runtime.spawn.spawn_actor` on this host, or a
        strategy with its signature and handle (`launch.slurm_steps.SlurmSpawner`: job steps)."""
        self.instances: dict[str, Instance] = {}
        self.state = "starting"
        self.failure = ""
        self.finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolves with "finished", "stopped" or "failed" when the run should end."""

    # -------------------------------------------------------------- startup
    async def start_roles(self) -> None:
        """Start every instance; roles start last-listed first (drivers last), each role's
        instances together, or with ``start: together`` every role not ending the run at
        once, then the rest. Raises StartupError naming what did not come up."""
        remove_orphaned_segments(self.topology.name)
        for wave in self._start_waves():
            instances = [
                self._add(role, index, self.topology.roles[role], self.configs.get(role))
                for role in wave for index in range(self.topology.roles[role].count)
            ]
            results = await asyncio.gather(*(self._spawn(i) for i in instances), return_exceptions=True)
            missing = [(i, r) for i, r in zip(instances, results) if isinstance(r, BaseException)]
            if missing:
                raise StartupError("\n".join(self._startup_report(i, error) for i, error in missing))
        self.state = "running"

    def _start_waves(self) -> list[list[str]]:
        order = list(reversed(list(self.topology.roles)))
        if self.topology.start == "ordered":
            return [[role] for role in order]
        drivers = [role for role in order if self.topology.roles[role].ends_run]
        return [wave for wave in ([r for r in order if r not in drivers], drivers) if wave]

    def _startup_report(self, instance: Instance, error: BaseException) -> str:
        lines = tail(self._stderr_path(instance), 15)
        text = f"{instance.name} ({instance.role}) did not come up: {error}"
        return text + (f"\n  last lines of {self._stderr_path(instance)}:\n    " + lines.replace("\n", "\n    ") if lines else "")

    def _add(self, role: str, index: int, spec: RoleSpec, config: dict[str, Any] | None, attached: bool = False) -> Instance:
        instance = Instance(role, index, spec, config, attached=attached)
        self.instances[instance.name] = instance
        return instance

    def _stderr_path(self, instance: Instance) -> Path:
        assert self.run_dir is not None
        return RunDir(self.run_dir).stderr_log(instance.name)

    async def _spawn(self, instance: Instance) -> None:
        instance.state = "starting"
        settings = self.topology.runtime
        env = {**instance.spec.env, "TROUPE_RUN_DIR": str(self.run_dir)}
        devices = instance.spec.devices(instance.index)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(device.removeprefix("cuda:") for device in devices)
        stderr_path = self._stderr_path(instance)
        stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "a") as marker:
            marker.write(f"--- {time.strftime('%H:%M:%S')} starting {instance.name} (restart {instance.restarts}) ---\n")
        instance.process = await self.spawn(
            self.topology.entry_point(instance.role), instance.name, role=instance.role, instance=instance.index,
            bind=f"tcp://{self.topology.network.host}:*", registry=self.registry_endpoint, run=self.topology.name,
            run_dir=self.run_dir, config=instance.config, settings=settings, env=env, stderr_path=stderr_path,
            ready_timeout=self.topology.startup_timeout_s,
        )
        instance.state = "running"
        instance.started_at = time.time()
        instance.exit_code = None
        instance.watcher = self.start_background(self._watch(instance), f"watch-{instance.name}")
        node = getattr(instance.process, "node", None)
        self.notify(f"{instance.name} running (pid {instance.process.pid}{f' on {node}' if node else ''})")

    # -------------------------------------------------------------- watching
    async def _watch(self, instance: Instance) -> None:
        assert instance.process is not None
        code = await instance.process.wait()
        instance.exit_code = code
        if instance.stop_requested or self.state == "stopping":
            instance.state = "stopped"
            return
        if code == 0:
            instance.state = "exited"
            self.notify(f"{instance.name} exited cleanly")
            self._check_ends_run(instance.role)
            return
        policy = instance.spec.restart
        if policy.policy == "on-failure" and instance.restarts < policy.max_restarts:
            instance.state = "restarting"
            delay = min(policy.backoff_s * 2 ** instance.restarts, MAX_BACKOFF_S)
            instance.restarts += 1
            self.notify(f"{instance.name} exited with code {code}; restart {instance.restarts}/{policy.max_restarts} in {delay:g} s")
            await asyncio.sleep(delay)
            if self.state != "stopping" and not instance.stop_requested:
                try:
                    await self._spawn(instance)
                except SpawnError as error:
                    self._fail_run(instance, f"its restart failed: {error}")
            return
        why = "its restart policy is 'never'" if policy.policy == "never" else f"it was restarted {instance.restarts} times already (max_restarts {policy.max_restarts})"
        self._fail_run(instance, f"exited with code {code} and {why}")

    def _fail_run(self, instance: Instance, text: str) -> None:
        """`instance` cannot go on: the run fails with a report naming it and its last output."""
        instance.state = "failed"
        lines = tail(self._stderr_path(instance), 20)
        self.failure = f"role {instance.role}: {instance.name} {text}" + (
            f"\nlast lines of {self._stderr_path(instance)}:\n{lines}" if lines else ""
        )
        self.notify(f"run failing: {instance.name} {text}")
        if not self.finished.done():
            self.finished.set_result("failed")

    def _check_ends_run(self, role: str) -> None:
        if not self.topology.roles[role].ends_run:
            return
        of_role = [i for i in self.instances.values() if i.role == role]
        if all(i.state == "exited" for i in of_role) and not self.finished.done():
            self.notify(f"every {role} instance has finished: stopping the run")
            self.finished.set_result("finished")

    async def on_membership(self, event: MembershipEvent) -> None:
        instance = self.instances.get(event.record.name)
        if event.event != "left" or event.reason != "heartbeat-timeout" or instance is None:
            return
        if instance.process is not None and instance.process.returncode is None and instance.process.pid == event.record.pid:
            self.notify(f"{instance.name} stopped heartbeating while its process lives: killing it")
            instance.process.kill()  # the watcher restarts it per its policy

    # -------------------------------------------------------------- stopping
    async def stop_all(self) -> None:
        """Stop every instance, role by role in listing order (drivers first)."""
        self.state = "stopping"
        for role in self.topology.roles:
            live = [i for i in self.instances.values() if i.role == role and i.process is not None]
            await asyncio.gather(*(self._stop(i) for i in live))

    async def _stop(self, instance: Instance) -> None:
        instance.stop_requested = True
        instance.state = "stopping"
        assert instance.process is not None
        instance.exit_code = await instance.process.stop(timeout=self.topology.stop_timeout_s)
        instance.state = "stopped"

    # ------------------------------------------------------------- requests
    @handler
    async def status(self, query: StatusQuery) -> RunStatus:
        instances = [instance.status() for instance in self.instances.values()]
        return RunStatus(run=self.topology.name, state=self.state, instances=instances, failure=self.failure)

    @handler
    async def stop_run(self, request: StopRun) -> None:
        self.notify(f"stop requested: {request.reason}")
        if not self.finished.done():
            self.finished.set_result("stopped")

    @handler
    async def stop_instance(self, request: StopInstance) -> InstanceStatus:
        instance = self.instances.get(request.name)
        if instance is None:
            raise KeyError(f"no instance named {request.name!r}; this run has {sorted(self.instances)}")
        if instance.process is not None and instance.process.returncode is None:
            self.notify(f"stopping {instance.name} on request")
            await self._stop(instance)
        return instance.status()

    @handler
    async def attach(self, request: Attach) -> Attached:
        spec = self.topology.roles.get(request.role)
        if spec is None:
            raise KeyError(f"this run has no role {request.role!r}; it has {sorted(self.topology.roles)}")
        if self.state != "running":
            raise RuntimeError(f"the run is {self.state}; instances can be attached only while it runs")
        config = self.attach_config(request.role, request.overrides or [])
        first = 1 + max((i.index for i in self.instances.values() if i.role == request.role), default=-1)
        names = await self.start_instances(request.role, first, request.count, config)
        return Attached(names)

    async def start_instances(self, role: str, first: int, count: int, config: dict[str, Any] | None) -> list[str]:
        """Start `count` more instances of `role`, numbered from `first`; returns their names once ready."""
        spec = self.topology.roles[role]
        instances = [self._add(role, first + k, spec, config, attached=True) for k in range(count)]
        results = await asyncio.gather(*(self._spawn(instance) for instance in instances), return_exceptions=True)
        failed = [(i, r) for i, r in zip(instances, results) if isinstance(r, BaseException)]
        if failed:
            raise StartupError("\n".join(self._startup_report(i, error) for i, error in failed))
        return [instance.name for instance in instances]

    def attach_config(self, role: str, overrides: list[str]) -> dict[str, Any] | None:
        """The role's config block with `key=value` overrides applied, validated."""
        from runtime.host import load_actor_class

        config = json.loads(json.dumps(self.configs.get(role) or {}))
        problems = apply_overrides(config, overrides)
        if problems:
            raise ValueError("; ".join(str(problem) for problem in problems))
        cls = load_actor_class(self.topology.entry_point(role))
        return cls.Config.model_validate(config).model_dump(mode="json") if cls.Config is not None else None


def runtime_settings_for(topology: Topology, run_dir: Path) -> RuntimeSettings:
    """The topology's runtime settings, pointing at the run's credentials: its secret
    always, its CURVE keys when the topology enables them (runtime.security)."""
    files = RunDir(Path(run_dir).resolve())
    update = {"secret_file": str(files.secret), "curve_keys_dir": str(files.keys) if topology.network.curve else None}
    return topology.runtime.model_copy(update=update)
