"""The GSM8K example end to end: original GSM8K rows through examples/gsm8k/convert.py,
then examples/gsm8k-grpo.yaml launched as written, with only its placeholders and
GPU settings overridden by `--set`, on a tiny random Qwen2 with a character-level
tokenizer and a chat template. A random model answers nothing right, so the reward
is 0; what is checked is that the real-model path (messages, chat template, the
gsm8k reward, evaluation) runs from the example's own files."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from examples.arith.build import byte_level_symbol, save_tokenizer
from tests.e2e.cli import troupe

REPO = Path(__file__).resolve().parents[2]
CONVERT = REPO / "examples" / "gsm8k" / "convert.py"
TOPOLOGY = REPO / "examples" / "gsm8k-grpo.yaml"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
NAMES = ["Tom", "Ana", "Li", "Sam", "Mia"]
THINGS = ["apples", "pencils", "stickers", "marbles", "cookies"]


def original_rows() -> list[dict[str, str]]:
    """Twenty word problems in the original GSM8K format: a question and a worked
    solution ending in ``#### <number>`` (the last one with a comma-grouped answer)."""
    rows = []
    for i in range(19):
        name, thing = NAMES[i % len(NAMES)], THINGS[i // len(NAMES) % len(THINGS)]
        a, b = 3 + i, 2 + i % 4
        if i % 2 == 0:
            question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
            answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"
        else:
            question = f"{name} buys {b} bags with {a} {thing} in each. How many {thing} does {name} buy?"
            answer = f"{name} buys {b} * {a} = <<{b}*{a}={a * b}>>{a * b} {thing}.\n#### {a * b}"
        rows.append({"question": question, "answer": answer})
    rows.append({"question": "A farm sells 300 eggs a day. How many eggs does it sell in 4 days?",
                 "answer": "It sells 300 * 4 = <<300*4=1200>>1200 eggs.\n#### 1,200"})
    return rows


def expected_ground_truths(rows: list[dict[str, str]]) -> list[str]:
    return [row["answer"].split("####")[-1].strip().replace(",", "") for row in rows]


def character_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus <pad> and <eos>.

    A byte-level BPE without merges rather than a WordLevel model: transformers'
    AutoTokenizer loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which
    imposes a byte-level pre-tokenizer and decoder (a WordLevel vocabulary would lose
    its spaces); a byte-level vocabulary of single characters reads the same under both.
    """
    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {token: index for index, token in enumerate(["<pad>", "<eos>", "<unk>", *map(byte_level_symbol, characters)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=1024
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer Qwen2 (hidden size 32) with the tokenizer above."""
    directory = tmp_path_factory.mktemp("gsm8k") / "model"
    tokenizer = character_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    save_tokenizer(tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rows of `original_rows` written as original GSM8K JSONL and converted by the example's script."""
    directory = tmp_path_factory.mktemp("gsm8k-data")
    original = directory / "original.jsonl"
    original.write_text("".join(json.dumps(row) + "\n" for row in original_rows()))
    out = directory / "converted" / "train.jsonl"
    result = subprocess.run([sys.executable, str(CONVERT), "--in", str(original), "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def overrides(model: Path, data: Path) -> list[str]:
    """`--set` arguments that swap the example's placeholders and GPU settings for the tiny CPU run."""
    values: dict[str, Any] = {
        "runtime.heartbeat_timeout_s": 10.0,
        "roles.controller.config.tokenizer": str(model),
        "roles.controller.config.data.files": [str(data)],
        "roles.controller.config.eval.data.files": [str(data)],
        "roles.controller.config.steps": 2,
        "roles.controller.config.prompts_per_step": 2,
        "roles.controller.config.sampling": {"n": 2, "temperature": 1.0, "max_new_tokens": 8},
        "roles.controller.config.eval.sampling": {"n": 1, "top_k": 1, "max_new_tokens": 8},
        "roles.trainer.config.update": {"ppo_epochs": 1, "mini_batch_size": 4, "micro_batch_size": 4},
    }
    for role in ("generator", "trainer", "reference"):
        values[f"roles.{role}.placement"] = "cpu"
        values[f"roles.{role}.config.model"] = str(model)
        values[f"roles.{role}.config.device"] = "cpu"
        values[f"roles.{role}.config.dtype"] = "float32"
    # Values are YAML; JSON is YAML that quotes every path safely.
    return [arg for path, value in values.items() for arg in ("--set", f"{path}={json.dumps(value)}")]


def test_convert_turns_original_rows_into_chat_rows_with_the_final_number(converted: Path) -> None:
    rows = [json.loads(line) for line in converted.read_text().splitlines()]
    originals = original_rows()
    assert [row["ground_truth"] for row in rows] == expected_ground_truths(originals)
    assert rows[-1]["ground_truth"] == "1200"  # "#### 1,200" is canonical, as the reward reads it
    for row, original in zip(rows, originals):
        assert row["data_source"] == "openai/gsm8k"
        [message] = row["messages"]
        assert message["role"] == "user"
        assert message["content"].startswith(original["question"]) and message["content"].endswith('after "####".')


def test_convert_rejects_a_row_without_a_final_answer_and_names_its_line(tmp_path: Path) -> None:
    original = tmp_path / "original.jsonl"
    rows = [{"question": "How many?", "answer": "#### 3"}, {"question": "And now?", "answer": "Five."}]
    original.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out.jsonl"
    result = subprocess.run([sys.executable, str(CONVERT), "--in", str(original), "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{original}:2" in result.stderr and "'####'" in result.stderr
    assert not out.exists()  # nothing is written when a row fails


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_gsm8k_example_trains_a_real_model_directory_on_converted_rows(
    run_dir: Path, tiny_model: Path, converted: Path
) -> None:
    result = troupe("launch", str(TOPOLOGY), "--run-dir", str(run_dir), "--no-status",
                    *overrides(tiny_model, converted), timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert {"train/reward", "train/kl_div", "train/loss", "weights/version"} <= record.keys()
    assert [r["weights/version"] for r in steps] == [1, 2]

    samples = [json.loads(line) for line in (run_dir / "eval" / "step_0.jsonl").read_text().splitlines()]
    assert sorted(s["ground_truth"] for s in samples) == sorted(expected_ground_truths(original_rows()))
    assert all(s["prompt"].startswith("<|user|>\n") and s["prompt"].endswith("<|assistant|>\n") for s in samples)
