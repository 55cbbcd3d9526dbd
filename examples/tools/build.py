"""Build the tool-use example: a tiny chat model that multiplies two-digit numbers
with a calculator now and then, and gets them wrong when it answers alone.

    python examples/tools/build.py --out examples/tools/data [--seed 0] [--quick]

writes, under ``--out``:

- ``model/``: a Hugging Face causal LM (a tiny Qwen2, float32, safetensors) with a
  character-level tokenizer whose chat template renders system, user, assistant and
  tool messages and the names of the tools offered, loadable by every troupe role;
- ``train.jsonl`` and ``heldout.jsonl``: rows ``{"prompt": "37*84=", "ground_truth":
  "3108", "data_source": "arith_tools"}`` over every product of two two-digit numbers
  (disjoint prompts), which the built-in ``calculator`` environment reads;
- ``build.json``: what was built and how the warm-started model plays held-out
  episodes (`build` returns the same dict).

The conversation the model learns (one line here; the template writes no newlines
between messages)::

    <|system|>tools: calculator\\n<|user|>37*84=<|assistant|><tool_call>
    {"name": "calculator", "arguments": {"expression": "37*84"}}
    </tool_call><eos><|tool|>3108<|assistant|>3108<eos>

or, answering alone, ``...<|user|>37*84=<|assistant|>3108<eos>``. The tool call is the
``hermes`` format (roles.agents.tool_calls) written out character by character; only
``<tool_call>`` and ``</tool_call>`` are single tokens, as in Qwen's vocabulary.

Why this warm start. RL reinforces what the policy already does now and then; it
cannot invent a 60-character JSON call. So a short supervised pass (teacher forcing,
loss on the assistant's tokens only) teaches both ways to answer: a share
`BuildSettings.tool_share` of the traces call the calculator (copy the question into
the call, then copy the tool's result), the rest answer directly with the right
product. A model this small cannot learn two-digit multiplication in a minute, so
its direct answers are mostly wrong, while its calls mostly succeed; and because
the choice in the traces is a coin flip, the model learns to call the tool on about
that share of questions, whatever the question. What is left for RL is to learn
that calling pays: the tool-call rate and the success rate should rise together.
The traces are tokenized with the same functions the episode runner uses
(roles.agents.chat_tokens), so they are the token sequences a trajectory holds.

Everything is seeded (split, trace mix, weights, batch order, measurement sampling).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `roles` lives at the repository root
    sys.path.insert(0, str(ROOT))

from examples.arith.build import byte_level_symbol, one_torch_thread, save_tokenizer, write_jsonl  # noqa: E402
from examples.tools.episodes import measure_episodes  # noqa: E402
from roles.agents.chat_tokens import encode, observation_tokens, prompt_tokens  # noqa: E402
from roles.agents.environments import CALCULATOR_SCHEMA, evaluate_arithmetic  # noqa: E402
from roles.agents.tool_calls import ToolCall, tool_call_format  # noqa: E402

DATA_SOURCE = "arith_tools"
OPERANDS = range(32, 100)
"""Both factors are two-digit numbers whose product has four digits (32*32 = 1024 to
99*99 = 9801): 4,624 questions."""
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARACTERS = [chr(code) for code in range(32, 127)] + ["\n"]
"""Printable ASCII and the newline: whatever a tool or an error message writes has a token."""
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
"""Special tokens (left out of a decoded turn) that open each message."""
CALL_TOKENS = ["<tool_call>", "</tool_call>", "name", "arguments", "calculator", "expression"]
"""Ordinary added tokens, kept in a decoded turn (where the hermes format reads them):
the tags, and the words of a calculator call, which a real vocabulary also holds
whole; they shorten a call from 64 tokens to 35."""
CHAT_TEMPLATE = (
    "{%- if tools %}<|system|>tools: {% for tool in tools %}{{ tool['function']['name'] }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}{{ '\\n' }}{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<eos>"
    "{%- else %}<|{{ message['role'] }}|>{{ message['content'] }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""Each message after its role's token, an assistant turn ended by eos; with tools, a
first line naming them (the template reads ``tools``, so the episode runner passes them
here instead of describing them in a system message)."""
TOOLS = [CALCULATOR_SCHEMA]
TOOL_FORMAT = tool_call_format("hermes")
MAX_TOKENS = 256


@dataclass(frozen=True)
class BuildSettings:
    """Sizes of one build: the full example or the quick one the test uses."""

    heldout_size: int
    """Held-out questions (the rest of the 8,100 are train)."""
    tool_share: float
    """How often the warm-started model chooses to call the calculator (the share of
    taught choices that are calls)."""
    call_trace_share: float
    """Share of the supervised traces that call the calculator: more than `tool_share`,
    so that calling is learned well, with the choice taught on only some of them."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    batch_size: int
    """Traces per supervised step."""
    learning_rate: float
    """AdamW's, after `warmup_steps` of linear warmup, then decayed linearly to a tenth."""
    warmup_steps: int
    sft_steps: int
    """Supervised steps."""
    measured_episodes: int
    """Held-out episodes played at temperature 1 to report the warm start in build.json."""


FULL = BuildSettings(heldout_size=256, tool_share=0.25, call_trace_share=0.5, hidden_size=96, intermediate_size=384,
                     num_hidden_layers=2, num_attention_heads=4, batch_size=64, learning_rate=3e-3, warmup_steps=30,
                     sft_steps=800, measured_episodes=512)
QUICK = BuildSettings(heldout_size=64, tool_share=0.5, call_trace_share=0.5, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, batch_size=32, learning_rate=3e-3, warmup_steps=20, sft_steps=400,
                      measured_episodes=64)


def multiplication_rows(seed: int, heldout_size: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, heldout) rows over every product of two two-digit numbers, each once."""
    rows = [{"prompt": f"{a}*{b}=", "ground_truth": str(a * b), "data_source": DATA_SOURCE}
            for a in OPERANDS for b in OPERANDS]
    random.Random(seed).shuffle(rows)
    return rows[heldout_size:], rows[:heldout_size]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (a byte-level BPE without merges, as
    examples/arith/build.py explains) plus the role and tool-call tokens.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, the characters of `CHARACTERS`, then
    `ROLE_TOKENS` and `CALL_TOKENS`.
    """
    vocab = {token: index for index, token in enumerate([PAD, EOS, UNK, *map(byte_level_symbol, CHARACTERS)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                      model_max_length=MAX_TOKENS)
    wrapped.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    wrapped.add_tokens([AddedToken(token, special=False, normalized=False) for token in CALL_TOKENS])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer: PreTrainedTokenizerBase, settings: BuildSettings) -> Qwen2ForCausalLM:
    """A freshly initialised tiny Qwen2 (seed torch first for fixed weights)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers, num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads, max_position_embeddings=MAX_TOKENS, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=96,
                                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return model


def trace(tokenizer: PreTrainedTokenizerBase, row: dict[str, str], use_tool: bool,
          teach_choice: bool = True) -> tuple[list[int], list[int]]:
    """One supervised trace: (token ids, loss mask), the mask 1 on the assistant's tokens
    (but on the first one, the choice between calling and answering, only when
    `teach_choice`).

    Built as the episode runner builds a trajectory: the prompt with the tools, each
    assistant turn as its tokens and eos, each observation by `observation_tokens`.
    """
    question = [{"role": "user", "content": row["prompt"]}]
    ids = prompt_tokens(tokenizer, question, TOOLS, TOOL_FORMAT)
    mask = [0] * len(ids)
    eos = [tokenizer.eos_token_id]
    if use_tool:
        expression = row["prompt"].removesuffix("=")
        call = TOOL_FORMAT.render([ToolCall("calculator", {"expression": expression})])
        result = [{"role": "tool", "name": "calculator", "content": json.dumps(evaluate_arithmetic(expression))}]
        turn = encode(tokenizer, call) + eos
        observation = observation_tokens(tokenizer, question, call, True, result, TOOLS, TOOL_FORMAT)
        ids, mask = ids + turn + observation, mask + [1] * len(turn) + [0] * len(observation)
    answer = encode(tokenizer, row["ground_truth"]) + eos
    ids, mask = ids + answer, mask + [1] * len(answer)
    if not teach_choice:
        mask[mask.index(1)] = 0
    return ids, mask


def supervised_batch(traces: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), each [batch, longest], right-padded; labels
    are -100 wherever the loss mask is 0."""
    longest = max(len(ids) for ids, _ in traces)
    input_ids = torch.full((len(traces), longest), pad)
    attention_mask = torch.zeros((len(traces), longest), dtype=torch.long)
    labels = torch.full((len(traces), longest), -100)
    for row, (ids, mask) in enumerate(traces):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(torch.tensor(mask) > 0, torch.tensor(ids), -100)
    return input_ids, attention_mask, labels


def warm_start(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, train: list[dict[str, str]],
               settings: BuildSettings, seed: int) -> float:
    """`settings.sft_steps` supervised steps on traces of `train` rows; the last loss.

    Each trace calls the tool with probability `settings.tool_share`.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        return 1.0 - 0.9 * (step - settings.warmup_steps) / max(1, settings.sft_steps - settings.warmup_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # the share of call traces whose choice is taught, so that tool_share of the taught choices are calls
    calls, alone = settings.call_trace_share, 1.0 - settings.call_trace_share
    taught_calls = settings.tool_share * alone / (calls * (1.0 - settings.tool_share))
    if not 0.0 < taught_calls <= 1.0:
        raise ValueError(f"call_trace_share {calls} must be at least tool_share {settings.tool_share}")
    draw = random.Random(seed)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(1, settings.sft_steps + 1):
        traces = []
        for row in draw.sample(train, settings.batch_size):
            use_tool = draw.random() < settings.call_trace_share
            traces.append(trace(tokenizer, row, use_tool, teach_choice=not use_tool or draw.random() < taught_calls))
        input_ids, attention_mask, labels = supervised_batch(traces, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == settings.sft_steps:
            print(f"sft step {step:4d}  loss {loss.item():.4f}", flush=True)
    model.eval()
    return float(loss.item())


def build(out: Path, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Write the model, tokenizer, data and build.json under `out`; return build.json's dict."""
    with one_torch_thread():
        return _build(Path(out), seed, quick)


def _build(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    settings = QUICK if quick else FULL
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    train, heldout = multiplication_rows(seed, settings.heldout_size)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)

    # the traces are tokenized by the tokenizer the roles will load (transformers
    # loads a qwen2 checkpoint's tokenizer as its own class), so they match exactly
    save_tokenizer(build_tokenizer(), model_dir)
    torch.manual_seed(seed)
    model = build_model(build_tokenizer(), settings)
    model.config.save_pretrained(model_dir)  # AutoTokenizer reads the model type from it
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    loss = warm_start(model, tokenizer, train, settings, seed)
    model.save_pretrained(model_dir, safe_serialization=True)
    sft_seconds = time.perf_counter() - started

    measured = heldout[: settings.measured_episodes] * max(1, settings.measured_episodes // len(heldout))
    numbers = measure_episodes(model, tokenizer, measured, seed=seed + 1)
    report = {
        "seed": seed, "quick": quick, "settings": asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "train_rows": len(train), "heldout_rows": len(heldout), "final_sft_loss": round(loss, 4),
        "heldout_episodes": {"episodes": len(measured), "temperature": 1.0, **numbers},
        "sft_seconds": round(sft_seconds, 2), "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"built {out}: {report['parameters']} parameters, {settings.sft_steps} sft steps in {sft_seconds:.0f} s; "
          f"held-out episodes: success {numbers['success']:.3f}, tool calls {numbers['tool_call_rate']:.3f} "
          f"(success with a call {numbers['success_with_call']:.3f}, alone {numbers['success_alone']:.3f})", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the traces, the weights and the sampling")
    parser.add_argument("--quick", action="store_true", help="a much smaller build (for the test)")
    args = parser.parse_args()
    build(args.out, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
