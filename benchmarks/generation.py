"""The generator's sampling loop (`HFBackend`) against transformers' own `generate`, on
the same batch, in one process.

Both sample `--samples` responses to each of `--prompts` chat prompts of `--data`
(the first rows of a chat-format JSONL) with temperature 1, no truncation, and exactly
`--max-new-tokens` tokens each (eos ignored, so both do the same number of decoding
steps), and both end with the per-token log-probabilities of the sampled tokens under
softmax(logits / temperature), which the trainer's ratio needs: `HFBackend` takes them
while sampling; after `generate` they are taken from its raw logits
(``output_logits=True``). The two alternate, `--repeats` times each; the medians are
compared. `HFBackend` prefills each distinct prompt once and copies its keys and values
to the prompt's rows; `generate` expands the prompts before prefilling.

    python benchmarks/generation.py --model /tmp/real/smollm2-hf --data prompts.jsonl \\
        [--prompts 8 --samples 4 --max-new-tokens 32 --repeats 3 --threads 2]

Prints a table and, last, one JSON line whose ``hf_backend_over_generate`` is the ratio
of the medians (below 1: HFBackend is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rl_runs import machine  # noqa: E402
from roles.generation import HFBackend, SamplingParams, load_causal_lm  # noqa: E402


def chat_prompts(tokenizer, data: Path, count: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    rows = [json.loads(line) for line in data.read_text().splitlines()[:count]]
    rendered = [tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True) for row in rows]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]


def with_hf_backend(backend: HFBackend, prompts: list[list[int]], samples: int, max_new_tokens: int) -> int:
    output = backend.generate(prompts, SamplingParams(n=samples, max_new_tokens=max_new_tokens, ignore_eos=True))
    return int(output.response_mask.sum())


def with_generate(model, tokenizer, prompts: list[list[int]], samples: int, max_new_tokens: int) -> int:  # type: ignore[no-untyped-def]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            num_return_sequences=samples, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True,
        )
        tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float()  # [N, R, V] raw logits, before any processor
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return int(logprobs.numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="chat-format JSONL (a messages column)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model, args.dtype)
    prompts = chat_prompts(tokenizer, args.data, args.prompts)
    backend = HFBackend(model, tokenizer, micro_batch=args.prompts * args.samples)
    runs = {
        "HFBackend": lambda: with_hf_backend(backend, prompts, args.samples, args.max_new_tokens),
        "model.generate": lambda: with_generate(model, tokenizer, prompts, args.samples, args.max_new_tokens),
    }
    for run in runs.values():  # warm-up: first calls allocate and pick kernels
        torch.manual_seed(0)
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            torch.manual_seed(0)
            started = time.perf_counter()
            tokens[name] = run()
            seconds[name].append(time.perf_counter() - started)
    print(f"# generation  {time.strftime('%Y-%m-%d %H:%M')}  {machine()}  {args.model.name} {args.dtype}, "
          f"{args.prompts} prompts x {args.samples} samples x {args.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats")
    print(f"\n{'sampler':<16}{'median s':>10}{'min s':>10}{'tokens/s':>10}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<16}{median:>10.2f}{min(values):>10.2f}{tokens[name] / median:>10.1f}")
    ratio = statistics.median(seconds["HFBackend"]) / statistics.median(seconds["model.generate"])
    print(json.dumps({"hf_backend_s": round(statistics.median(seconds["HFBackend"]), 3),
                      "generate_s": round(statistics.median(seconds["model.generate"]), 3),
                      "hf_backend_over_generate": round(ratio, 3)}))


if __name__ == "__main__":
    main()
