"""Build the built-in arithmetic example: a tiny model that is partly right.

    python examples/arith/build.py --out runs/arith [--seed 0] [--quick]

writes, under ``--out``:

- ``model/``: a Hugging Face causal LM (a tiny Qwen2, float32, safetensors) with
  a character-level tokenizer and a generation config, loadable with
  ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``;
- ``train.jsonl`` and ``heldout.jsonl``: rows such as
  ``{"prompt": "12+7=", "ground_truth": "19", "data_source": "arith"}``
  (disjoint prompts; the correct response is ``"19"`` then the eos token);
- ``build.json``: what was built (`build` returns the same dict).

Why a warm start: RL can only raise the reward of answers the policy already
samples now and then. A randomly initialised model never writes ``19`` after
``12+7=``, so GRPO would see all-zero groups and learn nothing; a fully trained
one leaves nothing to learn. And a model stopped early, while it still gets most
sums wrong, leaves RL to learn arithmetic from a reward alone, far slower than
the supervised pass that got it there.

So the supervised pass (teacher forcing, loss on the answer and eos only) uses
heavy label smoothing: the model learns which answer is right, so its greedy
answers are mostly right, but it keeps a large share of probability on every
other token, so answers sampled at temperature 1 are right only about a quarter
of the time. It stops once held-out sampled accuracy reaches
`TARGET_SAMPLED_ACCURACY` or after ``max_sft_steps``; the smoothing holds
sampled accuracy near the target, so both come at about the same step (with
seed 0 the step cap: sampled 0.23, greedy 0.78 on the held-out prompts). What is
left for RL is to make the model sure of what it knows, a change that carries
over from the train prompts to the held-out ones: a bare GRPO loop (16 prompts x
8 samples, AdamW at 3e-4) took held-out sampled accuracy from 0.23 to 0.69 in
150 steps.

Everything is seeded (data split, initial weights, batch order, the sampling
used for calibration), so one seed gives the same weights on a given machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `roles` lives at the repository root
    sys.path.insert(0, str(ROOT))

from roles.rewards.arithmetic import score_arithmetic  # noqa: E402

DATA_SOURCE = "arith"
OPERAND_MAX = 20
"""Operands run over 0..OPERAND_MAX inclusive, for both ``+`` and ``-``."""
OPERATORS = ("+", "-")
CHARACTERS = "0123456789+-*= \n"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
"""Message contents back to back: a user turn "12+7=" is the prompt itself, and
the generation prompt adds nothing because the model answers right after "="."""

MAX_NEW_TOKENS = 6
"""Room for the longest answer ("-20" or "40") plus eos, and a little junk."""
TARGET_SAMPLED_ACCURACY = 0.25
"""The warm start stops once held-out accuracy at temperature 1 reaches this."""
REPORTED_SAMPLES_PER_PROMPT = 8
"""Sampled answers per held-out prompt behind build.json's sampled accuracy."""
WARMUP_STEPS = 50


@dataclass(frozen=True)
class BuildSettings:
    """Sizes of one build: the full example or the quick one the tests use."""

    heldout_size: int
    """Held-out prompts (the rest of the 2 * 21 * 21 expressions are train)."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    batch_size: int
    """Train rows per supervised step."""
    learning_rate: float
    """AdamW's, reached after `WARMUP_STEPS` of linear warmup and then held."""
    label_smoothing: float
    """Share of each answer token's target spread over the whole vocabulary."""
    max_sft_steps: int
    """The warm start stops here even if the target accuracy was not reached."""
    eval_every: int
    """Supervised steps between two calibration measurements."""
    samples_per_prompt: int
    """Sampled answers per held-out prompt in a calibration measurement."""
    stop_at_target: bool
    """Stop at `TARGET_SAMPLED_ACCURACY`; the quick build just runs its steps."""


FULL = BuildSettings(
    heldout_size=96,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    batch_size=64,
    learning_rate=1e-3,
    label_smoothing=0.42,
    max_sft_steps=900,
    eval_every=50,
    samples_per_prompt=8,
    stop_at_target=True,
)
QUICK = BuildSettings(
    heldout_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    batch_size=32,
    learning_rate=3e-3,
    label_smoothing=0.45,
    max_sft_steps=10,
    eval_every=5,
    samples_per_prompt=1,
    stop_at_target=False,
)


def arithmetic_rows(seed: int, heldout_size: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return (train, heldout) rows over every ``a op b`` with operands 0..OPERAND_MAX.

    Each expression appears once, so no held-out prompt is in train.
    """
    rows = [
        {"prompt": f"{a}{op}{b}=", "ground_truth": str(a + b if op == "+" else a - b), "data_source": DATA_SOURCE}
        for op in OPERATORS
        for a in range(OPERAND_MAX + 1)
        for b in range(OPERAND_MAX + 1)
    ]
    random.Random(seed).shuffle(rows)
    return rows[heldout_size:], rows[:heldout_size]


def byte_level_symbol(character: str) -> str:
    """Return the symbol byte-level BPE uses for an ASCII character (" " -> "Ġ", "\\n" -> "Ċ")."""
    ((symbol, _),) = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(character)
    return symbol


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return a character-level tokenizer: one token per character, exact round trip.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, then the characters of `CHARACTERS`.
    No bos token: a prompt is encoded as its characters alone.

    It is a byte-level BPE with single characters for its vocabulary and no
    merges, not a simpler word-level one, because transformers 5's AutoTokenizer
    loads any ``qwen2`` checkpoint's tokenizer as its ``Qwen2Tokenizer``: that
    keeps the vocabulary and merges of tokenizer.json but imposes Qwen2's own
    byte-level pre-tokenizer and decoder. A byte-level vocabulary without merges
    encodes and decodes the same way under both pipelines (the test checks it).
    """
    vocab = {token: index for index, token in enumerate([PAD, EOS, UNK, *map(byte_level_symbol, CHARACTERS)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=64
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Save so that transformers 4.45+ (which vLLM may pin) loads it too.

    5.x records the class as "TokenizersBackend", which 4.x does not know, and
    puts the chat template in a file 4.45 does not read. 4.x loads the class
    "PreTrainedTokenizerFast" straight from tokenizer.json, and a template kept
    inside the config; 5.x ignores the class for a qwen2 model (see
    `build_tokenizer`).
    """
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def build_model(tokenizer: PreTrainedTokenizerFast, settings: BuildSettings) -> Qwen2ForCausalLM:
    """Return a freshly initialised tiny Qwen2 (seed torch first for fixed weights)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model


def supervised_batch(
    tokenizer: PreTrainedTokenizerFast, rows: list[dict[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (input_ids, attention_mask, labels), each [batch, longest], right-padded.

    A sequence is prompt + answer + eos; labels are -100 on the prompt and the
    padding, so the loss covers the answer and eos only.
    """
    prompts = [tokenizer.encode(row["prompt"]) for row in rows]
    answers = [tokenizer.encode(row["ground_truth"]) + [tokenizer.eos_token_id] for row in rows]
    longest = max(len(p) + len(a) for p, a in zip(prompts, answers))
    input_ids = torch.full((len(rows), longest), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), -100)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        end = len(prompt) + len(answer)
        input_ids[i, :end] = torch.tensor(prompt + answer)
        attention_mask[i, :end] = 1
        labels[i, len(prompt) : end] = torch.tensor(answer)
    return input_ids, attention_mask, labels


@torch.no_grad()
def generate_responses(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    temperature: float,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Return the text generated after each prompt, cut at eos (greedy if temperature is 0).

    Prompts of one length go through together, so no padding is needed.
    """
    responses: dict[int, str] = {}
    by_length: dict[int, list[int]] = {}
    encoded = [tokenizer.encode(prompt) for prompt in prompts]
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    for length in sorted(by_length):
        indices = by_length[length]
        sequences = torch.tensor([encoded[i] for i in indices])
        output = model(input_ids=sequences, use_cache=True)
        for _ in range(MAX_NEW_TOKENS):
            logits = output.logits[:, -1, :]
            if temperature == 0:
                next_tokens = logits.argmax(dim=-1, keepdim=True)
            else:
                probabilities = torch.softmax(logits / temperature, dim=-1)
                next_tokens = torch.multinomial(probabilities, 1, generator=generator)
            sequences = torch.cat([sequences, next_tokens], dim=1)
            if sequences.shape[1] - length == MAX_NEW_TOKENS:
                break
            output = model(input_ids=next_tokens, past_key_values=output.past_key_values, use_cache=True)
        for i, generated in zip(indices, sequences[:, length:].tolist()):
            if tokenizer.eos_token_id in generated:
                generated = generated[: generated.index(tokenizer.eos_token_id)]
            responses[i] = tokenizer.decode(generated)
    return [responses[i] for i in range(len(prompts))]


def accuracy(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: list[dict[str, str]],
    temperature: float,
    samples_per_prompt: int = 1,
    seed: int = 0,
) -> float:
    """Mean `score_arithmetic` of responses to `rows` (each prompt `samples_per_prompt` times)."""
    repeated = [row for row in rows for _ in range(samples_per_prompt)]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    responses = generate_responses(model, tokenizer, [row["prompt"] for row in repeated], temperature, generator)
    model.train(was_training)
    scores = [
        score_arithmetic(row["prompt"], response, row["ground_truth"]).score
        for row, response in zip(repeated, responses)
    ]
    return sum(scores) / len(scores)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of each next token over the labelled positions.

    Args:
        logits: [batch, length, vocab], the model's output on ``input_ids``.
        labels: [batch, length], as `supervised_batch` returns them (aligned with
            ``input_ids``, -100 where there is no loss); position t predicts t + 1.
        label_smoothing: share of the target spread over the whole vocabulary.
    """
    next_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    next_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(
        next_logits, next_labels, ignore_index=-100, label_smoothing=label_smoothing
    )


def warm_start(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    train: list[dict[str, str]],
    heldout: list[dict[str, str]],
    settings: BuildSettings,
    seed: int,
) -> tuple[int, float]:
    """Train on `train` until held-out sampled accuracy reaches the target.

    Returns (supervised steps taken, held-out accuracy at temperature 1 then).
    Each calibration measurement uses the same sampling seed, so the stopping
    step depends on the weights alone.
    """
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98), weight_decay=0.0
    )
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    order = random.Random(seed)
    model.train()
    sampled = 0.0
    step = 0
    while step < settings.max_sft_steps:
        rows = order.sample(train, settings.batch_size)
        input_ids, attention_mask, labels = supervised_batch(tokenizer, rows)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = answer_loss(logits, labels, settings.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        step += 1
        if step % settings.eval_every == 0 or step == settings.max_sft_steps:
            sampled = accuracy(model, tokenizer, heldout, 1.0, settings.samples_per_prompt, seed)
            print(f"sft step {step:4d}  loss {loss.item():.3f}  held-out sampled accuracy {sampled:.3f}", flush=True)
            if settings.stop_at_target and sampled >= TARGET_SAMPLED_ACCURACY:
                break
    return step, sampled


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on one thread, then restore the previous count.

    The model's ops are so small that a second thread gains little, and on a
    machine shared with other processes the threads wait for each other: a
    supervised step measured 8x slower with two threads than with one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build(out: Path, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Write the model, tokenizer, data and build.json under `out`; return build.json's dict."""
    with one_torch_thread():
        return _build(Path(out), seed, quick)


def _build(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    settings = QUICK if quick else FULL
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    train, heldout = arithmetic_rows(seed, settings.heldout_size)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = build_model(tokenizer, settings)
    steps, calibration_accuracy = warm_start(model, tokenizer, train, heldout, settings, seed)

    # measured again with a seed of its own, so the reported figure is not the
    # one the stopping rule picked (which is biased towards a lucky draw)
    sampled = accuracy(model, tokenizer, heldout, 1.0, REPORTED_SAMPLES_PER_PROMPT, seed=seed + 1)
    greedy = accuracy(model, tokenizer, heldout, 0.0)
    model.save_pretrained(model_dir, safe_serialization=True)
    save_tokenizer(tokenizer, model_dir)

    report = {
        "seed": seed,
        "quick": quick,
        "settings": asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "train_rows": len(train),
        "heldout_rows": len(heldout),
        "sft_steps": steps,
        "target_sampled_accuracy": TARGET_SAMPLED_ACCURACY,
        "calibration_sampled_accuracy": calibration_accuracy,
        "heldout_sampled_accuracy": sampled,
        "heldout_sampled_accuracy_samples_per_prompt": REPORTED_SAMPLES_PER_PROMPT,
        "heldout_greedy_accuracy": greedy,
        "max_new_tokens": MAX_NEW_TOKENS,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"built {out}: {report['parameters']} parameters, {steps} sft steps, held-out accuracy "
        f"sampled {sampled:.3f} greedy {greedy:.3f}, {report['seconds']} s",
        flush=True,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the sampling")
    parser.add_argument("--quick", action="store_true", help="a much smaller, uncalibrated build (for tests)")
    args = parser.parse_args()
    build(args.out, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
