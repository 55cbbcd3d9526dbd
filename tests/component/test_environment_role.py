"""The environment role in its own processes, asked by an episode runner over the
runtime: episodes spread over instances and stay on theirs; a stalled environment
crashes its instance on purpose; a killed instance ends its episodes, not the run."""

from __future__ import annotations

import asyncio
import string

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


async def test_a_generator_runs_episodes_with_the_environment_role_into_a_rollout_batch(spawn, run_here, tmp_path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from protocols.batch import Batch
    from protocols.environments import EpisodeSettings, GenerateEpisodes
    from roles.rollout import sampling_message
    from roles.sampling import SamplingParams

    tokenizer = chat_tokenizer()
    torch.manual_seed(0)  # a reproducible random model
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    registry = await spawn("runtime.registry:Registry", "registry", settings=FAST)
    await spawn(ROLE, "environment-0", role="environment", registry=registry.endpoint, settings=FAST,
                config={"environment": "number_guessing"})
    generator = await spawn("roles.generator:Generator", "generator-0", role="generator", registry=registry.endpoint,
                            settings=FAST, config={"model": str(tmp_path / "model"), "join_channel": False, "cpu_threads": 1},
                            ready_timeout=120)
    caller = Watcher("controller-0", settings=FAST)
    await run_here(caller, registry=registry.endpoint)
    # a random model: any lowercase letter ends its turn (stop strings), so episodes go several turns
    sampling = sampling_message(SamplingParams(n=2, temperature=1.0, max_new_tokens=12, stop=list(string.ascii_lowercase)))
    settings = EpisodeSettings("environment", "hermes", max_turns=3, max_total_tokens=400, max_new_tokens_per_turn=12,
                               max_in_flight=8, call_timeout_s=20, reward="last")
    prompts = Batch(columns={"prompt_ids": [[5, 6], [7, 8]], "episode_row": [{"secret": 4, "max_guesses": 3},
                                                                             {"secret": 9, "max_guesses": 3}],
                             "uid": ["g-0", "g-1"], "prompt": ["the row's own text", "the row's own text"]})
    rollouts = await caller.ask(generator.endpoint, GenerateEpisodes(prompts, sampling, settings), timeout=120)
    batch = rollouts.batch
    assert batch.size == 4 and batch.columns["uid"] == ["g-0", "g-0", "g-1", "g-1"] and rollouts.version == -1
    t = batch.tensors
    assert ((t["response_mask"] > 0) <= (t["response_attention_mask"] > 0)).all()
    assert (t["behavior_logprobs"][t["response_mask"] == 0] == 0).all() and (t["behavior_logprobs"] <= 0).all()
    assert set(batch.columns["finish_reason"]) <= {"done", "max_turns", "truncated", "max_tokens"}
    assert all(score in (0.0, 1.0) for score in t["score"].tolist())
    for row in range(4):  # the prompt text is the one each episode started from: the game's first message
        started = tokenizer.decode(t["prompt_ids"][row][t["prompt_mask"][row] > 0].tolist(), skip_special_tokens=False)
        assert batch.columns["prompt"][row] == started and "Guess" in started
    observed = (t["response_attention_mask"] > 0) & (t["response_mask"] == 0)
    multi_turn = [row for row in range(4) if t["turns"][row] > 1]
    assert multi_turn, "a random model whose turns end at vowels should play more than one turn"
    assert all(observed[row].any() for row in multi_turn)  # the game's replies sit between the turns, not trained on
    # one trace per trajectory: every call of an episode on the environment carries it
    import json
    import time

    def received() -> dict[str, set[str]]:
        kinds: dict[str, set[str]] = {}
        for line in (tmp_path / "logs" / "environment-0.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "receive" and event.get("kind", "").startswith("env."):
                kinds.setdefault(event.get("trace_id"), set()).add(event["kind"])
        return kinds

    expected = {trace: {"env.start", "env.step"} if turns > 1 else {"env.start"}  # a second turn followed a step
                for trace, turns in zip(batch.columns["episode_trace"], t["turns"].tolist())}
    deadline = time.monotonic() + 10  # the environment's log is written behind its work
    while any(not kinds <= received().get(trace, set()) for trace, kinds in expected.items()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    logged = received()
    assert all(kinds <= logged.get(trace, set()) for trace, kinds in expected.items()), (expected, logged)
