"""Multi-turn episodes: the generator continuing ready trajectories against waiting for
the whole batch each turn, in one run.

``--episodes`` episodes of ``--turns`` model turns each, at most ``--in-flight`` at once
(the next starts as one ends), run through `roles.episodes.EpisodeRunner` on a randomly initialised Qwen2 (4 layers, hidden 128, vocabulary 512,
the size that makes a decoding step take measurable time on a CPU) sampled by the
generator's own backend (`HFBackend.generate_requests`, one batch per call). Each model
turn is ``--turn-tokens`` sampled tokens (``ignore_eos``; the benchmark then ends the
turn with the end-of-sequence token, as a model that stops there would). The environment
answers each turn after a random delay in [d, ``--spread`` x d] (``--delay-ms`` d),
log-uniform by default (each factor of the spread as likely: tool calls and remote
services have long tails) or uniform (``--delays uniform``); seeded, the same delays for
both loops. It answers with a short observation and ends the episode after the last turn. Environments live in this process
(`LocalEnvironments`, coroutines), so what is measured is the loop, not a transport.

Two loops on the same episodes, interleaved and repeated (medians):

* ``continue``: ready trajectories sample together as soon as the running batch ends
  (``continue_ready=True``, the default);
* ``lock-step``: every turn waits for every environment's answer
  (``continue_ready=False``), as a generator that treats a turn as one batch does.

Target (issue 21): continue >= 2x the trajectories per second of lock-step at a delay
spread of 10x. Prints a table and, last, one JSON line.

    python benchmarks/multiturn.py [--episodes 256 --in-flight 32 --turns 4 --turn-tokens 8 --delay-ms 100
                                    --spread 10 --delays log-uniform|uniform --repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import machine  # noqa: E402
from roles.agents.environments import Action, Environment, Observation  # noqa: E402
from roles.agents.tool_calls import tool_call_format  # noqa: E402
from roles.agents.trajectory import TrajectoryLimits  # noqa: E402
from roles.episode_sampling import backend_sampler  # noqa: E402
from roles.episodes import EpisodeRunner, LocalEnvironments, SampledTurn, TurnRequest  # noqa: E402
from roles.generation import HFBackend  # noqa: E402
from roles.sampling import SamplingParams  # noqa: E402

VOCABULARY = 512
EOS = 1


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Token ``t<i>`` per id, split on spaces; a ChatML-shaped template of plain words."""
    vocab = {"<pad>": 0, "<eos>": EOS, **{f"t{index}": index for index in range(2, VOCABULARY)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    tokenizer.chat_template = ("{% for message in messages %}t2 {{ message['content'] }} t3 {% endfor %}"
                               "{% if add_generation_prompt %}t4 {% endif %}")
    return tokenizer


def random_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCABULARY, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=EOS, pad_token_id=0)
    return Qwen2ForCausalLM(config).eval()


class DelayedEnvironment(Environment):
    """Answers each turn after the row's delay for that turn; ends after ``turns`` turns."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.delays = row["delays"]
        return [{"role": "user", "content": " ".join(f"t{10 + index}" for index in range(12))}]

    async def step(self, action: Action) -> Observation:  # type: ignore[override]
        await asyncio.sleep(self.delays[action.turn - 1])
        done = action.turn == len(self.delays)
        return Observation([] if done else [{"role": "tool", "content": "t20 t21 t22 t23"}], float(done), done)


def ending_turns(sample, batches: list[int]):  # type: ignore[no-untyped-def]
    """The backend's turns (``ignore_eos``) ended with the end-of-sequence token; each
    call's batch size is appended to `batches`."""
    async def sample_and_end(requests: list[TurnRequest]) -> list[SampledTurn]:
        batches.append(len(requests))
        shorter = [TurnRequest(request.tokens, request.max_new_tokens - 1) for request in requests]
        return [SampledTurn([*turn.tokens, EOS], [*turn.logprobs, 0.0], turn.text, turn.version, True)
                for turn in await sample(shorter)]
    return sample_and_end


async def run_loop(continue_ready: bool, rows: list[dict[str, Any]], args: argparse.Namespace,
                   backend: HFBackend, tokenizer: PreTrainedTokenizerFast) -> tuple[float, float]:
    """Seconds to run every episode to its end, and the mean batch a sampling call took."""
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_new_tokens=args.turn_tokens, seed=0)

    async def run_here(function, *arguments):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(function, *arguments)

    batches: list[int] = []
    sample = ending_turns(backend_sampler(backend, params, lambda: 0, run_here), batches)
    limits = TrajectoryLimits(max_turns=args.turns, max_total_tokens=4096, max_new_tokens_per_turn=args.turn_tokens + 1)
    runner = EpisodeRunner(sample, LocalEnvironments(DelayedEnvironment, timeout_s=60), tokenizer,
                           tool_call_format("hermes"), limits, "bench", continue_ready, args.in_flight)
    started = time.perf_counter()
    episodes = await runner.run(rows)
    seconds = time.perf_counter() - started
    reasons = {episode.trajectory.end_reason for episode in episodes}
    assert reasons == {"done"}, f"every episode should end done, got {reasons}"
    return seconds, statistics.mean(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument("--delays", choices=("log-uniform", "uniform"), default="log-uniform")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = word_tokenizer()
    backend = HFBackend(random_model(), tokenizer)
    draw = random.Random(0)
    low = args.delay_ms / 1000

    def delay() -> float:
        if args.delays == "uniform":
            return draw.uniform(low, low * args.spread)
        return low * args.spread ** draw.random()

    rows = [{"delays": [delay() for _ in range(args.turns)]} for _ in range(args.episodes)]
    loops = {"continue": True, "lock-step": False}
    asyncio.run(run_loop(True, rows[:4], args, backend, tokenizer))  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    batch: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, continue_ready in loops.items():
            took, mean_batch = asyncio.run(run_loop(continue_ready, rows, args, backend, tokenizer))
            seconds[name].append(took)
            batch[name].append(mean_batch)
    print(f"# multi-turn  {time.strftime('%Y-%m-%d %H:%M')}  {machine()}  torch {torch.__version__}")
    print(f"# {args.episodes} episodes ({args.in_flight} in flight) x {args.turns} turns of {args.turn_tokens} tokens; "
          f"environment delays {args.delays} in [{args.delay_ms:g}, {args.delay_ms * args.spread:g}] ms; "
          f"{args.repeats} repeats, medians")
    print(f"\n{'loop':<12}{'seconds':>9}{'trajectories/s':>16}{'mean batch':>12}")
    rates = {}
    for name in loops:
        median = statistics.median(seconds[name])
        rates[name] = args.episodes / median
        print(f"{name:<12}{median:>9.2f}{rates[name]:>16.1f}{statistics.median(batch[name]):>12.1f}")
    ratio = rates["continue"] / rates["lock-step"]
    print(f"\ncontinue / lock-step: {ratio:.2f}x (target >= 2x at a spread of 10x)")
    print(json.dumps({"continue_trajectories_per_s": round(rates["continue"], 2),
                      "lockstep_trajectories_per_s": round(rates["lock-step"], 2),
                      "continue_over_lockstep": round(ratio, 2), "spread": args.spread, "delays": args.delays}))


if __name__ == "__main__":
    main()
