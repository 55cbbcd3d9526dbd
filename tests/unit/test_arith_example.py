"""The arithmetic example's build writes a loadable model, a character tokenizer and clean data.

One quick build (a smaller, uncalibrated model) is shared by the module; the
determinism test builds a second one with the same seed.
"""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.arith.build import build, build_tokenizer


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    return out, build(out, seed=0, quick=True)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_result(prompt):
    match = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt)
    assert match, f"unexpected prompt {prompt!r}"
    a, operator, b = int(match[1]), match[2], int(match[3])
    return a + b if operator == "+" else a - b


def test_model_directory_loads_with_the_auto_classes(built):
    out, _ = built
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "qwen2"
    assert model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer.encode("12+7=")])
    assert model(input_ids=ids).logits.shape == (1, 5, len(tokenizer))


def test_tokenizer_gives_one_token_per_character_and_decodes_exactly(built):
    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    for text in ["12+7=19", "3-8=-5", "2*3 = 6\n10-4=6"]:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("12+7=19")) == list("12+7=19")


def test_tokenizer_has_distinct_pad_and_eos_and_no_bos(built):
    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert tokenizer.bos_token is None
    assert tokenizer.decode(tokenizer.encode("19") + [tokenizer.eos_token_id], skip_special_tokens=True) == "19"


def test_saved_tokenizer_encodes_every_row_like_the_one_the_model_was_trained_with(built):
    # AutoTokenizer loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer,
    # not as the object that was saved; the ids must not change on the way.
    out, _ = built
    loaded = AutoTokenizer.from_pretrained(out / "model")
    trained_with = build_tokenizer()
    for row in read_jsonl(out / "train.jsonl") + read_jsonl(out / "heldout.jsonl"):
        text = row["prompt"] + row["ground_truth"]
        assert loaded.encode(text) == trained_with.encode(text)


def test_chat_template_renders_the_user_turn_as_the_bare_prompt(built):
    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    messages = [{"role": "user", "content": "12+7="}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "12+7="


def test_train_and_heldout_rows_are_disjoint_and_correct(built):
    out, _ = built
    train = read_jsonl(out / "train.jsonl")
    heldout = read_jsonl(out / "heldout.jsonl")
    assert len(train) >= 300 and len(heldout) >= 50
    for row in train + heldout:
        assert set(row) == {"prompt", "ground_truth", "data_source"}
        assert row["data_source"] == "arith"
        assert row["ground_truth"] == str(expected_result(row["prompt"]))
    train_prompts = {row["prompt"] for row in train}
    heldout_prompts = {row["prompt"] for row in heldout}
    assert len(train_prompts) == len(train) and len(heldout_prompts) == len(heldout)
    assert not train_prompts & heldout_prompts


def test_build_json_records_what_was_built(built):
    out, report = built
    assert json.loads((out / "build.json").read_text()) == report
    assert report["seed"] == 0 and report["quick"] is True
    assert report["train_rows"] == len(read_jsonl(out / "train.jsonl"))
    assert report["heldout_rows"] == len(read_jsonl(out / "heldout.jsonl"))
    assert report["parameters"] > 0 and report["sft_steps"] > 0
    assert 0.0 <= report["heldout_sampled_accuracy"] <= 1.0
    assert 0.0 <= report["heldout_greedy_accuracy"] <= 1.0


def test_the_same_seed_builds_identical_weights_and_data(built, tmp_path):
    out, report = built
    again = build(tmp_path, seed=0, quick=True)
    first = load_file(out / "model" / "model.safetensors")
    second = load_file(tmp_path / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    for data in ["train.jsonl", "heldout.jsonl"]:
        assert (out / data).read_text() == (tmp_path / data).read_text()
    assert again["heldout_sampled_accuracy"] == report["heldout_sampled_accuracy"]


@pytest.mark.parametrize("demo", ["examples/arith/demo.py", "examples/smollm2/demo.py"])
def test_the_demos_run_through_the_python_api_without_a_troupe_subprocess(demo: str) -> None:
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / demo).read_text()
    imported = {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert "subprocess" not in imported and "examples.launching" in imported
