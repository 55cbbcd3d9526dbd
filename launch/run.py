"""The Python API of a training run, for notebooks and scripts; `troupe launch`, `troupe
stop` and `troupe ps` are thin shells over it.

    from launch import Run
    run = Run.from_topology("examples/arith-grpo.yaml")
    run.register_evaluator(MyEvaluator(eval_rows))     # evaluate(ctx) -> dict of floats
    for step, metrics in enumerate(run.train()):       # one dict per step
        print(step, metrics["train/reward"], metrics["train/kl_div"], metrics["train/loss"])
    run.export("fine_tuned_llm")                        # Hugging Face save_pretrained

How it talks to the run. `train()` starts the launcher as a child Python process
(``python -m launch.launcher RUN_DIR``, in a session of its own; `launch()` instead runs
it in this process, in the foreground, as `troupe launch` does). A child process rather
than a thread of this one, because the launcher owns SIGINT/SIGTERM (first: stop in
order, second: kill), which only a main thread can handle, and because a notebook's
Ctrl-C, or an exception in the loop, must stop the run in order rather than tear the
supervisor down mid-step: it reaches only this process, and `train()` then asks the
supervisor to stop (`stop()`, over the runtime, as `troupe stop`), waiting until every
role process has ended. A failed launcher is its exit code and launcher.log.

Metrics arrive as messages. The run directory's registry.json is read only to find the
run's registry; then a client actor (launch.client.RunSession, on a thread of its own)
registers, subscribes to the controller (protocols.run_events) and receives every
record the controller writes, in order. A subscriber that joins late (`Run.attach` of a
run under way, or after the last step) gets everything written so far in the reply to
its subscription, then the rest as messages, so it misses neither a step nor the end.

Registered evaluators run in this process between two yields against the live generator
and reward roles (training goes on meanwhile); their numbers are added to the step's
dict as ``eval/<name>`` and written to metrics.jsonl. With evaluators the subscription
holds the run after its last step until `train()` releases it (or this process goes
away, or the controller's ``hold_timeout_s`` passes). Leaving the loop early (break, an
exception, Ctrl-C) stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.client import (  # noqa: F401 - ask_ready_role is `troupe eval --now`'s
    LeftBehind,
    RunEnded,
    RunSession,
    actor_rows,
    ask_ready_role,
    ask_supervisor,
    live_run,
    run_coroutine,
    stop_left_behind,
)
from launch.rundir import RunDirError, RunInfo, default_run_dir, launcher_alive, launcher_gone, read_run_info, tail
from protocols.run_events import StepMetrics, StepsDone
from protocols.supervision import InstanceStatus, StopInstance, StopRun
from roles.evaluator import EvalContext, Evaluator
from roles.metrics import MetricsLog
from runtime.run_dir import RunDir

__all__ = ["EvalContext", "Evaluator", "Run", "RunBusyError", "RunError", "StopOutcome"]

CONTROLLER_ENTRIES = ("controller", "roles.controller:Controller")
LIVENESS_CHECK_S = 2.0
"""After this long without a message, `follow` checks that the launcher still runs."""


class RunError(RuntimeError):
    """The run could not start, or failed; the text says where to look."""


class RunBusyError(RunError):
    """The run directory holds a live run already."""


@dataclass(frozen=True)
class StopOutcome:
    """How a stopped run ended."""

    state: str
    """What registry.json records: ``finished`` or ``failed``."""
    left_behind: LeftBehind | None = None
    """When the launcher was gone: the role processes it left, stopped here."""


class Run:
    """One training run of a topology file (`from_topology`), or a run under way (`attach`)."""

    def __init__(self, run_dir: Path, topology: Any = None, configs: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.topology = topology
        """The validated topology (launch.topology.Topology); None for an attached run."""
        self.configs = configs or {}
        self.evaluators: list[tuple[str, Evaluator]] = []
        self.evaluations: list[dict[str, Any]] = []
        """The controller's evaluation records `follow` has seen (``eval/...`` of held-out data)."""
        self._launcher: Any = None
        """The launcher process this Run started (subprocess.Popen, launch.launcher.start_detached)."""
        self._session: RunSession | None = None
        self._tokenizer: Any = None

    @classmethod
    def from_topology(cls, path: str | Path, overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> Run:
        """A run of the topology at `path` (``--set``-style `overrides`; `run_dir`
        defaults to ``runs/<name>-<time>``). Validated now; nothing starts yet."""
        from launch.topology import TopologyError, load_topology

        try:
            topology, configs = load_topology(str(path), list(overrides))
        except TopologyError as error:
            raise RunError(str(error)) from error
        if run_dir is None:
            run_dir = Path(topology.run_dir) if topology.run_dir else default_run_dir(topology.name)
        return cls(Path(run_dir), topology, configs)

    @classmethod
    def attach(cls, run_dir: str | Path) -> Run:
        """The run in `run_dir`, started elsewhere (RunDirError if it never started)."""
        read_run_info(run_dir)
        return cls(Path(run_dir))

    def register_evaluator(self, evaluator: Evaluator, name: str | None = None) -> None:
        """Run `evaluator` after every ``evaluator.every_steps`` training steps."""
        if not callable(getattr(evaluator, "evaluate", None)):
            raise TypeError(f"{type(evaluator).__name__} has no evaluate(ctx) method")
        self.evaluators.append((name or type(evaluator).__name__, evaluator))

    # ------------------------------------------------------------------ starting
    def launch(self, live: bool | None = None) -> int:
        """Run it here in the foreground to its end (`troupe launch`): a live table on a
        terminal (`live`), plain lines otherwise; Ctrl-C stops it in order. Returns the
        exit code: 0 finished or stopped, 1 failed."""
        from launch.launcher import launch_run
        from launch.status import StatusView
        from runtime.host import run_event_loop

        topology = self._prepare()
        return run_event_loop(lambda: launch_run(topology, self.configs, self.run_dir, StatusView(live)), topology.runtime)

    def start(self) -> RunInfo:
        """Start it in the background (`troupe launch --detach`); return once every role is up."""
        launcher = self._start_launcher()
        log = RunDir(self.run_dir).launcher_log
        deadline = time.monotonic() + self.topology.startup_timeout_s + 30
        while time.monotonic() < deadline:
            if launcher.poll() is not None:
                raise RunError(f"the run failed to start (launcher exited {launcher.returncode}):\n{tail(log, 30)}")
            info = self._own_info()
            if info is not None and info.state == "running":
                return info
            time.sleep(0.2)
        raise RunError(f"the run did not come up in time; see {log}")

    # ------------------------------------------------------------------ following
    def train(self) -> Iterator[dict[str, Any]]:
        """Start the run (unless it was started or attached already) and yield each
        training step's metrics until it ends, with the registered evaluators' numbers
        added; stops the run if the loop is left early. RunError if the run failed."""
        finished = False
        try:
            for record in self.follow(hold=bool(self.evaluators)):
                yield self._with_evaluations(record)
            self.release()
            state = self.wait()
            if state == "failed":
                raise RunError(f"the run failed; see {RunDir(self.run_dir).launcher_log} and `troupe logs {self.run_dir}`")
            finished = True
        finally:
            try:
                if not finished:
                    self.stop()
            finally:
                self._close_session()

    def follow(self, hold: bool = False) -> Iterator[dict[str, Any]]:
        """Yield each training step's record as the controller sends it, until the steps
        are done (or the run ended; RunError if it failed). Starts the run if this Run
        neither started nor attached it. With `hold`, the run's roles stay up after the
        last step until `release()` (or this process goes away)."""
        session = self._connect(hold)
        last_step: int | None = None
        steps_done = False
        try:
            while True:
                event = session.next_event(timeout=LIVENESS_CHECK_S)
                if event is None:
                    if not self._launcher_running():
                        self._raise_if_failed()
                        return
                elif isinstance(event, StepMetrics):
                    if event.evaluation:
                        self.evaluations.append(event.metrics)
                    elif last_step is None or event.step > last_step:  # a restarted controller repeats steps
                        last_step = event.step
                        yield event.metrics
                elif isinstance(event, StepsDone):
                    steps_done = True
                    return
                elif isinstance(event, RunEnded):
                    self._raise_if_failed()
                    return
        finally:
            if not (steps_done and hold):  # a hold lasts until release(); anything else ends the session
                self._close_session()

    def release(self) -> None:
        """Let a run held by `follow(hold=True)` end (and leave it)."""
        if self._session is not None:
            try:
                self._session.release()
            finally:
                self._close_session()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the launcher has exited; returns the run's recorded end
        (``finished`` or ``failed``). RunError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._launcher_running():
            if deadline is not None and time.monotonic() > deadline:
                raise RunError(f"the run in {self.run_dir} is still running after {timeout:g} s")
            time.sleep(0.2)
        info = read_run_info(self.run_dir)
        return "failed" if launcher_gone(info) else info.state

    # ------------------------------------------------------------------ controlling
    def status(self) -> list[dict[str, Any]]:
        """One row per live actor (`troupe ps`): name, role, pid, host, state, uptime_s,
        messages_in/out, weights_version, restarts, attached, endpoint."""
        return run_coroutine(actor_rows(live_run(self.run_dir)))

    def launcher_gone(self) -> bool:
        """Whether the run's launcher died without recording an end (killed)."""
        return launcher_gone(read_run_info(self.run_dir))

    def live_info(self) -> RunInfo:
        """registry.json of the live run; RunDirError saying why when it is not live."""
        return live_run(self.run_dir)

    def stop(self, timeout: float = 120.0, reason: str = "the Python API") -> StopOutcome:
        """Stop every role of the run in order and wait for the launcher to exit (a no-op
        when it has ended). When the launcher is dead, stop the role processes it left on
        this host and record the run as failed. RunError after `timeout` seconds."""
        info = self._own_info() if self._launcher is not None else read_run_info(self.run_dir)
        if info is None:  # our launcher has not written registry.json yet: its signal handler stops what it started
            self._launcher.terminate()
            self._launcher.wait(timeout)
            return StopOutcome(read_run_info(self.run_dir).state if self._own_info() is not None else "failed")
        if launcher_gone(info):
            return StopOutcome("failed", stop_left_behind(self.run_dir, None, timeout))
        if not self._launcher_running():
            return StopOutcome(info.state)
        run_coroutine(ask_supervisor(info, StopRun(reason)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._launcher_running():
                if self.launcher_gone():  # it died while stopping the roles
                    return StopOutcome("failed", stop_left_behind(self.run_dir, None, max(1.0, deadline - time.monotonic())))
                return StopOutcome(read_run_info(self.run_dir).state)
            time.sleep(0.2)
        raise RunError(f"run {info.run} still running after {timeout:g} s (launcher pid {info.launcher_pid})")

    def stop_instance(self, name: str, timeout: float = 120.0) -> InstanceStatus:
        """Stop one instance for good (its work goes to the others); its status after."""
        return run_coroutine(ask_supervisor(live_run(self.run_dir), StopInstance(name), timeout=timeout))

    def stop_left_behind(self, instance: str | None = None, timeout: float = 120.0) -> LeftBehind:
        """The launcher is dead: stop the role processes it left here (all, or `instance`)."""
        return stop_left_behind(self.run_dir, instance, timeout)

    def export(self, out_dir: str | Path, step: int | None = None, adapter: bool = False) -> Path:
        """The policy of the run's newest checkpoint (or `step`'s) as a Hugging Face
        directory: safetensors, config, generation config, tokenizer (a LoRA run's with
        the adapter merged); with `adapter`, a LoRA run's adapter as a peft directory."""
        from launch.export import export_checkpoint

        return export_checkpoint(self.run_dir, Path(out_dir), step, adapter=adapter)

    # ------------------------------------------------------------------ internals
    def _prepare(self) -> Any:
        """Refuse a run directory with a live run; write the run directory."""
        from launch.launcher import prepare_run_dir

        if self.topology is None:
            raise RunError(f"this Run is attached to the run in {self.run_dir}, started elsewhere")
        try:
            info = read_run_info(self.run_dir)
        except RunDirError:
            pass
        else:
            if info.state in ("starting", "running") and launcher_alive(info):
                raise RunBusyError(f"a run is live in {self.run_dir} (launcher pid {info.launcher_pid}); "
                                   f"stop it first (troupe stop {self.run_dir}) or choose another --run-dir")
        self.topology = prepare_run_dir(self.topology, self.configs, self.run_dir)
        return self.topology

    def _start_launcher(self) -> Any:
        from launch.launcher import start_detached

        if self._launcher is not None:
            raise RunError(f"this Run started its run in {self.run_dir} already (launcher pid {self._launcher.pid})")
        self._prepare()
        self._launcher = start_detached(self.run_dir)
        return self._launcher

    def _own_info(self) -> RunInfo | None:
        """registry.json once this Run's launcher has written it (an older run's is not ours)."""
        try:
            info = read_run_info(self.run_dir)
        except RunDirError:
            return None
        return info if self._launcher is None or info.launcher_pid == self._launcher.pid else None

    def _connect(self, hold: bool) -> RunSession:
        """The session with the run, starting the run first when this Run has not."""
        if self._session is not None:
            return self._session
        if self._launcher is None and self.topology is not None:
            self._start_launcher()
        info = live_run(self.run_dir) if self._launcher is None else None  # attached: RunDirError unless live
        while info is None and (info := self._own_info()) is None:  # registry.json: where the registry listens
            if self._launcher.poll() is not None:
                raise RunError(f"the run failed to start (launcher exited {self._launcher.returncode}):\n"
                               f"{tail(RunDir(self.run_dir).launcher_log, 30)}")
            time.sleep(0.1)
        resolved = RunDir(self.run_dir).read_topology()
        controllers = [f"{name}-0" for name, role in resolved["roles"].items() if role["entry"] in CONTROLLER_ENTRIES]
        if len(controllers) != 1:
            raise RunError(f"{self.run_dir} needs exactly one controller role to follow, found {controllers}")
        host = (resolved.get("network") or {}).get("host", "127.0.0.1")
        self._session = RunSession(info, self.run_dir, controllers[0], hold, host)
        return self._session

    def _close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def _launcher_running(self) -> bool:
        if self._launcher is not None:
            return self._launcher.poll() is None
        return launcher_alive(read_run_info(self.run_dir))

    def _raise_if_failed(self) -> None:
        if self.wait(timeout=120) == "failed":
            raise RunError(f"the run failed; see {RunDir(self.run_dir).launcher_log} and `troupe logs {self.run_dir}`")

    def _with_evaluations(self, record: dict[str, Any]) -> dict[str, Any]:
        step = int(record["step"])
        due = [(name, e) for name, e in self.evaluators if step % max(1, getattr(e, "every_steps", 1)) == 0]
        if not due or self._session is None:
            return record
        context = EvalContext(step, int(record.get("weights/version", -1)), self.run_dir, self._load_tokenizer(),
                              self._session.ask_ready)
        values: dict[str, float] = {}
        for name, evaluator in due:
            for key, value in evaluator.evaluate(context).items():
                values[f"eval/{key}" if len(due) == 1 else f"eval/{name}/{key}"] = float(value)
        # one whole-line append, as the controller's and the evaluator role's (they write concurrently)
        MetricsLog(self.run_dir, tensorboard=False).write(step, values, source="python-evaluators")
        return {**record, **values}

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            controller = RunDir(self.run_dir).role_config(*CONTROLLER_ENTRIES)
            assert controller is not None  # _connect found the controller role
            self._tokenizer = AutoTokenizer.from_pretrained(controller["tokenizer"], local_files_only=True)
        return self._tokenizer
