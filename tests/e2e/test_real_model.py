"""The real-model topology end to end, on a shrunken copy of SmolLM2-135M-Instruct.

examples/smollm2-grpo.yaml is launched as written, with only its model, data and
sizes overridden by `--set`, on the converted model cut to its first two decoder
layers (examples/smollm2/build.py's shrunken copy): the real tokenizer (pad == eos ==
``<|im_end|>``), the real ChatML template with its default system prompt, the real
tied embeddings. One launch is shared by every test of the module.

A model cut to two of its thirty layers writes fluent-looking junk and never ends a
response with eos, so eos handling would go untested. Before the launch the copy gets
a few supervised steps on "The answer is N." followed by eos (its layers only; the
embeddings, and so the tied output head, stay as converted): it then stops where the
full model stops, after a short answer, and is right now and then by chance.

An evaluator of the test's own (tests/e2e/rollout_probe.py) writes down what the
generator returns at each evaluation, so the tests can check where responses end and
that the generator samples with exactly the weights the trainer checkpointed: the
exported checkpoint's log-probs of the probed responses match the generator's.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.smollm2.build import (
    BuildError,
    arithmetic_rows,
    compare_with_saved,
    is_complete,
    recipes,
    write_jsonl,
    write_shrunken_copy,
)
from roles.generation import positions_from_mask
from roles.logprobs import response_logprobs
from tests.e2e.cli import troupe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "examples" / "smollm2-grpo.yaml"
BUILT = REPO / "examples" / "smollm2" / "data"
STEPS = 2
MAX_NEW_TOKENS = 12
PROBE_TOKENS = 12
SYSTEM_PROMPT = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
EOS = 2
"""``<|im_end|>``: SmolLM2's eos and its pad token."""
SAME_WEIGHTS = 2e-3
"""Largest log-prob difference between two runs of the same weights (different batch
shapes and the KV cache move float32 results by about 1e-5)."""


def converted_model() -> Path | None:
    """The full converted model, when `make demo-real` (or build.py) has built it."""
    stamp = BUILT / "build.json"
    if not stamp.is_file():
        return None
    return BUILT / "model" if is_complete(BUILT, json.loads(stamp.read_text()).get("model"), recipes()["model"]) else None


def teach_answer_format(directory: Path, rows: list[dict[str, Any]], steps: int = 12) -> None:
    """A few supervised steps on "The answer is <ground truth>." + eos, on the decoder
    layers only (module docstring); saved back to `directory`."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied: the output head stays too
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch_size = 8
    for step in range(steps):
        pairs = []
        for row in rows[step * batch_size:(step + 1) * batch_size]:
            prompt = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
            answer = tokenizer(f"The answer is {row['ground_truth']}.", add_special_tokens=False)["input_ids"]
            pairs.append((tokenizer(prompt, add_special_tokens=False)["input_ids"], answer + [EOS]))
        width, answer_width = max(len(p) + len(a) for p, a in pairs), max(len(a) for _, a in pairs)
        ids = torch.full((len(pairs), width), EOS)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (prompt_ids, answer_ids) in enumerate(pairs):  # left-padded: every answer ends the row
            sequence = prompt_ids + answer_ids
            ids[row, width - len(sequence):] = torch.tensor(sequence)
            mask[row, width - len(sequence):] = 1
            labels[row, width - len(answer_ids):] = torch.tensor(answer_ids)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                       logits_to_keep=answer_width + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels[:, width - answer_width:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(directory, safe_serialization=True)


@pytest.fixture(scope="module")
def shrunken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two-layer copy (taught to stop), its untouched twin, and a little data."""
    root = tmp_path_factory.mktemp("smollm2")
    train, heldout = arithmetic_rows()
    write_jsonl(root / "train.jsonl", train[:16])
    write_jsonl(root / "heldout.jsonl", heldout[:4])
    initial = write_shrunken_copy(root / "cut", layers=2, source=converted_model())
    model = root / "model"
    shutil.copytree(initial, model)
    teach_answer_format(model, train[16:16 + 8 * 12])
    return {"model": model, "cut": initial, "train": root / "train.jsonl", "heldout": root / "heldout.jsonl",
            "root": root}


def overrides(data: dict[str, Path]) -> list[str]:
    """`--set` arguments: the shrunken model, the small data, a few small steps."""
    model = str(data["model"])
    values: dict[str, Any] = {
        "roles.controller.config.tokenizer": model,
        "roles.controller.config.data.files": [str(data["train"])],
        "roles.controller.config.steps": STEPS,
        "roles.controller.config.prompts_per_step": 2,
        "roles.controller.config.sampling": {"n": 4, "temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS},
        "roles.generator.config.model": model,
        "roles.generator.config.cpu_threads": 1,
        "roles.trainer.config.model": model,
        "roles.trainer.config.cpu_threads": 1,
        # a learning rate the weights visibly move at in two steps, and an entropy bonus
        # so they move even when every group scores the same (no advantage at all)
        "roles.trainer.config.optim": {"lr": 5.0e-6, "grad_clip": 1.0},
        "roles.trainer.config.entropy_coef": 0.01,
        "roles.trainer.config.update": {"ppo_epochs": 1, "mini_batch_size": 8, "micro_batch_size": 8},
        "roles.evaluator.config.tokenizer": model,
        "roles.evaluator.config.data.files": [str(data["heldout"])],
        "roles.evaluator.config.sampling": {"n": 2, "temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS, "seed": 1},
        "roles.evaluator.config.evaluators": [{
            "entry": "tests.e2e.rollout_probe:RolloutProbe", "name": "probe",
            "args": {"data": str(data["heldout"]), "rows": 4, "n": 2, "max_new_tokens": PROBE_TOKENS},
        }],
    }
    return [arg for path, value in values.items() for arg in ("--set", f"{path}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def run(shrunken: dict[str, Path]) -> dict[str, Any]:
    """One launch of the real topology, and its export; shared by the module's tests."""
    from tests.e2e.cli import run_processes

    run_dir = shrunken["root"] / "run"
    started = time.monotonic()
    result = troupe("launch", str(TOPOLOGY), "--run-dir", str(run_dir), "--no-status", *overrides(shrunken), timeout=400)
    launch_s = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exported = shrunken["root"] / "exported"
    export = troupe("export", str(run_dir), str(exported), timeout=120)
    assert export.returncode == 0, export.stdout + export.stderr
    yield {"dir": run_dir, "exported": exported, "launch_s": launch_s, **shrunken}
    leftovers = [p for p in run_processes(run_dir) if p.is_running()]
    for process in leftovers:
        process.kill()
    assert not leftovers, "processes outlived the run"


def records(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run["dir"] / "metrics.jsonl").read_text().splitlines()]


def probe(run: dict[str, Any], step: int) -> dict[str, Any]:
    return json.loads((run["dir"] / "probe" / f"step_{step}.json").read_text())


def test_every_step_trains_and_the_evaluator_scores_held_out_prompts_before_and_after(run):
    rows = records(run)
    trained = [r for r in rows if "train/reward" in r]
    assert [r["step"] for r in trained] == list(range(1, STEPS + 1))
    assert [r["weights/version"] for r in trained] == list(range(1, STEPS + 1))
    for record in trained:
        assert 0.0 <= record["train/reward"] <= 1.0
        assert record["train/response_length"] < MAX_NEW_TOKENS  # responses end at eos, not at the limit
        assert "timing/reference_s" not in record  # no reference role in this topology
    evaluations = {r["step"]: r for r in rows if "eval/accuracy" in r}
    assert sorted(evaluations) == [0, STEPS]
    for step, record in evaluations.items():
        assert record["eval/samples"] == 8
        assert 0.0 <= record["eval/accuracy"] <= 1.0
        samples = [json.loads(line) for line in (run["dir"] / "eval" / f"step_{step}.jsonl").read_text().splitlines()]
        assert len(samples) == 8 and all(s["weights_version"] == (step or -1) for s in samples)
    assert (run["dir"] / "checkpoints" / f"step_{STEPS}" / "controller.json").is_file()


def test_prompts_are_rendered_with_the_models_chat_template_and_its_default_system_prompt(run):
    samples = [json.loads(line) for line in (run["dir"] / "eval" / "step_0.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in run["heldout"].read_text().splitlines()]
    questions = {row["messages"][0]["content"] for row in heldout}
    for sample in samples:
        prompt = sample["prompt"]
        assert prompt.startswith(SYSTEM_PROMPT + "<|im_start|>user\n")
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert prompt[len(SYSTEM_PROMPT + "<|im_start|>user\n"):-len("<|im_end|>\n<|im_start|>assistant\n")] in questions
        assert "<|im_end|>" not in sample["response"]  # special tokens are not part of the text graded


def test_a_response_ends_with_its_first_eos_although_eos_is_also_the_pad_token(run):
    for step in (0, STEPS):
        record = probe(run, step)
        assert "stop" in record["finish_reasons"], record["responses"]
        for ids, mask, reason in zip(record["response_ids"], record["response_mask"], record["finish_reasons"]):
            length = int(sum(mask))
            assert mask == [1.0] * length + [0.0] * (len(mask) - length)
            generated = ids[:length]
            if reason == "stop":  # the eos is the last generated token, masked in, and the only one
                assert generated[-1] == EOS and EOS not in generated[:-1]
            else:
                assert reason == "length" and length == PROBE_TOKENS and EOS not in generated
            assert all(token == EOS for token in ids[length:])  # padding after it is the same id


def logprobs_under(model: torch.nn.Module, record: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        logprobs, _ = response_logprobs(
            model, torch.tensor(record["prompt_ids"]), torch.tensor(record["prompt_mask"]),
            torch.tensor(record["response_ids"]), torch.tensor(record["response_mask"]),
        )
    return logprobs


def test_the_generator_samples_with_exactly_the_weights_the_trainer_checkpointed(run):
    record = probe(run, STEPS)
    assert record["version"] == STEPS
    behavior = torch.tensor(record["behavior_logprobs"])
    trained = AutoModelForCausalLM.from_pretrained(run["exported"], local_files_only=True).eval()
    before = AutoModelForCausalLM.from_pretrained(run["model"], local_files_only=True).eval()
    trained_gap = (logprobs_under(trained, record) - behavior).abs().max().item()
    initial_gap = (logprobs_under(before, record) - behavior).abs().max().item()
    assert trained_gap < SAME_WEIGHTS
    assert initial_gap > 10 * SAME_WEIGHTS, "training did not move the weights enough for this check to mean anything"


def test_the_trainer_keeps_the_output_head_tied_to_the_embeddings_through_training(run):
    checkpoint = run["dir"] / "checkpoints" / f"step_{STEPS}"
    dcp_to_torch_save(checkpoint / "trainer", run["root"] / "trainer.pt")
    state = torch.load(run["root"] / "trainer.pt", weights_only=True)["model"]
    initial = AutoModelForCausalLM.from_pretrained(run["model"], local_files_only=True)
    embeddings = state["model.embed_tokens.weight"]
    assert not torch.equal(embeddings, initial.get_input_embeddings().weight)  # trained
    if "lm_head.weight" in state:
        assert torch.equal(state["lm_head.weight"], embeddings)


def test_the_export_loads_with_transformers_with_its_tokenizer_template_and_tied_head(run):
    exported = run["exported"]
    model = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 2
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Calculate 2 + 3."}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith(SYSTEM_PROMPT)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=EOS)
    assert output.shape[1] > ids["input_ids"].shape[1]


def test_the_conversion_check_fails_loudly_when_a_saved_weight_differs(shrunken, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(shrunken["cut"], local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(shrunken["cut"], local_files_only=True)
    assert compare_with_saved(reference, tokenizer, shrunken["cut"])["max_abs_logit_difference"] == 0.0
    damaged = AutoModelForCausalLM.from_pretrained(shrunken["cut"], local_files_only=True)
    with torch.no_grad():
        damaged.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    damaged.save_pretrained(tmp_path / "damaged")
    tokenizer.save_pretrained(tmp_path / "damaged")
    with pytest.raises(BuildError, match="differs from the GGUF file's by .* in a logit"):
        compare_with_saved(reference, tokenizer, tmp_path / "damaged")
