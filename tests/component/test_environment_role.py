"""The environment role in its own processes, asked by an episode runner over the
runtime: episodes spread over instances and stay on theirs; a stalled environment
crashes its instance on purpose; a killed instance ends its episodes, not the run."""

from __future__ import annotations

import asyncio

from roles.agents.trajectory import TrajectoryLimits
from roles.episodes import EpisodeRunner, RemoteEnvironments
from tests.component.test_registry import FAST, Watcher
from tests.unit.agents.chat_fixtures import chat_tokenizer
from tests.unit.agents.test_episode_runner import HERMES, CalculatorPolicy, rows

ROLE = "roles.environment:EnvironmentRole"


async def start(spawn, run_here, environment: str, instances: int = 1, **config):  # type: ignore[no-untyped-def]
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    processes = [await spawn(ROLE, f"environment-{index}", role="environment", instance=index, registry=registry.endpoint,
                             settings=FAST, config={"environment": environment, **config})
                 for index in range(instances)]
    caller = Watcher("generator-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    environments = RemoteEnvironments(caller, "environment", timeout_s=20)
    runner = EpisodeRunner(CalculatorPolicy(), environments, chat_tokenizer(), HERMES,
                           TrajectoryLimits(max_turns=3, max_total_tokens=2048, max_new_tokens_per_turn=200), "generator-0")
    return processes, environments, runner


async def test_episodes_spread_over_the_instances_stay_on_theirs_and_a_killed_instance_ends_only_its_own(
        spawn, run_here):  # type: ignore[no-untyped-def]
    processes, environments, runner = await start(spawn, run_here, "tests.component.environments:Waiting", instances=2)
    placed: list[str] = []
    step = environments.step

    async def recording_step(request):  # type: ignore[no-untyped-def]
        placed.append(f"{request.episode}@{environments.placed[request.episode]}")
        return await step(request)

    environments.step = recording_step  # type: ignore[method-assign]
    episodes = await runner.run(rows("12*7", "3+4", "9-2", "6/3"))
    assert [episode.trajectory.end_reason for episode in episodes] == ["done"] * 4
    assert all(episode.trajectory.rewards == [0.0, 1.0] for episode in episodes)
    by_episode: dict[str, set[str]] = {}
    for entry in placed:
        episode, instance = entry.split("@")
        by_episode.setdefault(episode, set()).add(instance)
    assert all(len(instances) == 1 for instances in by_episode.values())  # both turns on one instance
    assert sorted(instance for instances in by_episode.values() for instance in instances) == [
        "environment-0", "environment-0", "environment-1", "environment-1"]
    assert environments.placed == {}  # every episode was ended on its instance

    # two episodes in flight, one on each instance; environment-0 is killed while its episode waits
    running = asyncio.create_task(runner.run([{**rows("12*7")[0], "wait": 30}, {**rows("3+4")[0], "wait": 3}]))
    while len(placed) < 10:  # the first run made 8 steps; these two make their first
        await asyncio.sleep(0.05)
    victim = environments.placed["generator-0-4"]  # the runner's fifth episode: the first row of this run
    next(process for process in processes if process.name == victim).kill()
    killed, live = await asyncio.wait_for(running, 30)
    assert killed.trajectory.end_reason == "environment_error" and killed.trajectory.turns == 1
    assert live.trajectory.end_reason == "done" and live.trajectory.rewards == [0.0, 1.0]


async def test_a_stalled_environment_ends_its_episode_and_crashes_its_instance_for_a_restart(spawn, run_here):  # type: ignore[no-untyped-def]
    [process], _, runner = await start(spawn, run_here, "tests.component.environments:Stalling", step_timeout_s=1.0)
    [episode] = await runner.run(rows("12*7"))
    assert episode.trajectory.end_reason == "environment_error" and episode.trajectory.turns == 1
    for _ in range(100):  # the instance gives up on its stuck thread and exits, for the supervisor to restart
        if process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    assert process.returncode not in (None, 0)
