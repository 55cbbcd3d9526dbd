"""A LoRA run's policy out of the run: the merged export, the peft adapter export, an
adapter directory served, and the per-version adapter directories of the vLLM backend.

The "trainer's adapter model" is built as the trainer builds it (roles.lora.wrap_model
on the base directory), given random non-zero A and B, and checkpointed as the trainer
checkpoints it: ``{"model": trainable_state(model), "optim": ...}`` with
torch.distributed.checkpoint in checkpoints/step_N/trainer of a run directory whose
topology names the base and the ``lora`` settings. Every model is float32 on the CPU,
so the exports must give its logits to float32 rounding.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from examples.arith.build import build_tokenizer, save_tokenizer
from launch.cli import main as troupe_main
from launch.export import export_checkpoint, load_checkpoint_policy
from launch.serving.service import adapter_base, load_adapter_model
from roles.checkpoints import write_marker
from roles.generation import load_causal_lm
from roles.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LoraSettings, adapter_state, trainable_state, wrap_model
from roles.vllm_lora import AdapterVersions, VllmAdapterLoader, lora_engine_arguments, vllm_max_lora_rank
from runtime.run_dir import RunDir

SETTINGS = LoraSettings(r=4, alpha=8.0, dropout=0.05)
STEP = 2
TOKENS = torch.tensor([[3, 5, 7, 9, 11, 4, 8], [6, 6, 8, 10, 12, 14, 3]])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("base"))


def build_base(directory: Path) -> Path:
    """A tiny Qwen2 (a Llama-style decoder) and a character tokenizer, saved in `directory`."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, dtype="float32",
    ))
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    return directory


def trainer_adapter_model(base: Path) -> torch.nn.Module:
    """The base wrapped as the trainer wraps it, its adapter set to random non-zero values."""
    model, _ = load_causal_lm(base)
    wrapped = wrap_model(model, SETTINGS).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in trainable_state(wrapped).values():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return wrapped


@pytest.fixture(scope="module")
def adapter_model(base: Path) -> torch.nn.Module:
    return trainer_adapter_model(base)


@pytest.fixture(scope="module")
def reference_logits(adapter_model: torch.nn.Module) -> torch.Tensor:
    return logits_of(adapter_model)


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def write_run(run: Path, base: Path, model_state: dict[str, torch.Tensor], lora: LoraSettings | None) -> Path:
    """A run directory with one complete checkpoint laid out as the trainer and the controller write it."""
    files = RunDir(run)
    checkpoint = files.checkpoint(STEP)
    checkpoint.mkdir(parents=True)
    trainer = {"model": str(base), **({"lora": lora.model_dump()} if lora is not None else {})}
    files.topology.write_text(yaml.safe_dump({"name": "lora", "roles": {
        "trainer": {"entry": "roles.trainer:Trainer", "config": trainer}}}))
    with warnings.catch_warnings():  # one process, no process group: what the test means
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": {}}, checkpoint_id=str(checkpoint / "trainer"))
    (checkpoint / "trainer_meta.json").write_text(json.dumps({"version": STEP, "optimizer_steps": STEP}))
    write_marker(checkpoint, {"step": STEP, "sampler": {}, "kl_controller": {}, "version": STEP, "prompt_counter": 0})
    return run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, base: Path, adapter_model: torch.nn.Module) -> Path:
    # the trainer's checkpoint holds the adapter alone, under peft's names
    state = {name: tensor.clone() for name, tensor in trainable_state(adapter_model).items()}
    assert state and all(".lora_A.default." in name or ".lora_B.default." in name for name in state)
    return write_run(tmp_path_factory.mktemp("lora") / "run", base, state, SETTINGS)


def test_the_adapter_changes_the_logits_so_the_comparisons_below_mean_something(
        base: Path, reference_logits: torch.Tensor) -> None:
    plain, _ = load_causal_lm(base)
    assert (logits_of(plain) - reference_logits).abs().max() > 1e-2


def test_a_merged_lora_export_is_a_plain_model_with_the_trainers_logits(
        lora_run: Path, reference_logits: torch.Tensor, tmp_path: Path) -> None:
    out = export_checkpoint(lora_run, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits_of(model), reference_logits, rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name in load_file(out / "model.safetensors"))
    assert not (out / ADAPTER_CONFIG_FILE).exists()
    assert json.loads((out / "troupe_export.json").read_text()) == {
        "run_dir": str(lora_run), "checkpoint": f"step_{STEP}", "weights_version": STEP, "format": "model"}


def test_an_adapter_export_loads_with_peft_onto_its_base_with_the_trainers_logits(
        lora_run: Path, base: Path, reference_logits: torch.Tensor, tmp_path: Path) -> None:
    out = export_checkpoint(lora_run, tmp_path / "adapter", adapter=True)
    config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8.0, "LORA")
    assert isinstance(config["target_modules"], list) and "model.layers.1.mlp.down_proj" in config["target_modules"]
    assert not (out / "model.safetensors").exists()  # the adapter alone, not the base
    assert json.loads((out / "troupe_export.json").read_text())["base_model"] == str(base.resolve())

    onto_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    torch.testing.assert_close(logits_of(onto_base), reference_logits, rtol=1e-5, atol=1e-5)
    by_itself = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # finds the base from adapter_config.json
    torch.testing.assert_close(logits_of(by_itself), reference_logits, rtol=1e-5, atol=1e-5)


def test_load_checkpoint_policy_without_merging_gives_the_peft_model(
        lora_run: Path, reference_logits: torch.Tensor) -> None:
    model, tokenizer, checkpoint, version = load_checkpoint_policy(lora_run, merge=False)
    assert isinstance(model, PeftModel) and not model.training
    assert (checkpoint.name, version, tokenizer.padding_side) == (f"step_{STEP}", STEP, "left")
    torch.testing.assert_close(logits_of(model), reference_logits, rtol=1e-5, atol=1e-5)


def test_a_run_without_lora_exports_its_model_and_refuses_adapter(
        tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained, _ = load_causal_lm(base)
    with torch.no_grad():
        trained.model.norm.weight.fill_(0.5)  # a "trained" weight the export must carry
    run = write_run(tmp_path / "run", base, trained.state_dict(), lora=None)

    assert troupe_main(["export", str(run), str(tmp_path / "adapter"), "--adapter"]) == 2
    message = capsys.readouterr().err
    assert "the trainer's config has no lora" in message and "drop --adapter" in message
    assert not (tmp_path / "adapter").exists()

    assert troupe_main(["export", str(run), str(tmp_path / "model")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    torch.testing.assert_close(logits_of(exported), logits_of(trained), rtol=0, atol=0)


# ---------------------------------------------------------------------- serving an adapter directory
def test_an_adapter_directory_is_served_merged_onto_the_base_it_names(
        lora_run: Path, base: Path, reference_logits: torch.Tensor, tmp_path: Path) -> None:
    out = export_checkpoint(lora_run, tmp_path / "adapter", adapter=True)
    assert adapter_base(out) == base.resolve()
    assert adapter_base(base) is None  # a model directory is served as it is
    model, tokenizer = load_adapter_model(out, base.resolve(), "float32", "cpu")
    assert not isinstance(model, PeftModel) and tokenizer.padding_side == "left"
    torch.testing.assert_close(logits_of(model), reference_logits, rtol=1e-5, atol=1e-5)


def test_serving_an_adapter_whose_base_is_gone_fails_at_once_and_names_the_fix(
        lora_run: Path, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = export_checkpoint(lora_run, tmp_path / "adapter", adapter=True)
    config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (out / ADAPTER_CONFIG_FILE).write_text(json.dumps(config))

    assert troupe_main(["serve", str(out), "--port", "0"]) == 2
    message = capsys.readouterr().err
    assert f"the adapter's base model {tmp_path / 'moved-away'}" in message
    assert "does not exist" in message and "--base-model DIR" in message
    assert adapter_base(out, base) == base.resolve()  # --base-model points it at the base


def test_serve_refuses_a_directory_that_is_neither_a_model_nor_an_adapter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert troupe_main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "neither a Hugging Face model directory (config.json) nor a peft adapter" in capsys.readouterr().err


def test_serve_refuses_a_base_model_for_a_model_directory(
        base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert troupe_main(["serve", str(base), "--base-model", str(tmp_path), "--port", "0"]) == 2
    assert "--base-model is for a peft adapter directory" in capsys.readouterr().err


# ---------------------------------------------------------------------- the vLLM backend's adapter versions
def test_each_vllm_adapter_version_is_a_peft_directory_with_peft_s_own_keys(
        base: Path, adapter_model: torch.nn.Module, reference_logits: torch.Tensor, tmp_path: Path) -> None:
    versions = AdapterVersions(SETTINGS, base, root=tmp_path)
    first = versions.write(adapter_state(adapter_model).items(), version=3)
    adapter_model.save_pretrained(tmp_path / "by-peft")
    assert set(load_file(first / ADAPTER_WEIGHTS_FILE)) == set(load_file(tmp_path / "by-peft" / ADAPTER_WEIGHTS_FILE))
    config = json.loads((first / ADAPTER_CONFIG_FILE).read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(base.resolve())

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), first).eval()
    torch.testing.assert_close(logits_of(loaded), reference_logits, rtol=1e-5, atol=1e-5)

    second = versions.write(adapter_state(adapter_model).items(), version=4)
    assert first != second and first.name.endswith("-v3") and second.name.endswith("-v4")
    versions.keep_only(second)
    assert versions.versions() == [second]
    versions.close()
    assert not versions.folder.exists()


@pytest.mark.parametrize(("rank", "engine_rank"), [(1, 1), (4, 8), (8, 8), (16, 16), (17, 32), (300, 320)])
def test_the_engine_s_max_lora_rank_is_the_smallest_vllm_accepts_that_holds_the_adapter(
        rank: int, engine_rank: int) -> None:
    assert vllm_max_lora_rank(rank) == engine_rank
    assert lora_engine_arguments(LoraSettings(r=rank)) == {"enable_lora": True, "max_loras": 1,
                                                           "max_lora_rank": engine_rank}


def test_an_adapter_rank_vllm_cannot_hold_is_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match="lora.r is 600; vLLM serves adapters of rank at most 512"):
        vllm_max_lora_rank(600)


class RecordingBackend:
    """Stands in for a `VllmBackend` (which needs vLLM and a GPU): what the loader reads
    of it, and the adapters it is handed."""

    def __init__(self, path: Path, lora: LoraSettings | None) -> None:
        self.path = path
        self.lora = lora
        self.loaded: list[tuple[dict[str, torch.Tensor], int | None]] = []

    def load_adapter(self, named, version=None):  # type: ignore[no-untyped-def]
        self.loaded.append((dict(named), version))


def test_the_vllm_adapter_loader_expects_the_trainers_adapter_and_passes_whole_versions_on(
        base: Path, adapter_model: torch.nn.Module) -> None:
    backend = RecordingBackend(base, SETTINGS)
    loader = VllmAdapterLoader(backend)  # type: ignore[arg-type]
    adapter = adapter_state(adapter_model)
    assert loader.expected == {name: tuple(tensor.shape) for name, tensor in adapter.items()}
    loader(adapter.items())
    loader(adapter.items())
    assert [version for _, version in backend.loaded] == [1, 2]
    assert backend.loaded[0][0].keys() == adapter.keys()

    half = [(name, tensor) for name, tensor in adapter.items() if ".lora_A." in name]
    with pytest.raises(ValueError, match="the adapter version lacks"):
        loader(half)
    with pytest.raises(KeyError, match="not a tensor of this generator's adapter"):
        loader([*adapter.items(), ("model.layers.0.mlp.up_proj.lora_C.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="built with lora settings"):
        VllmAdapterLoader(RecordingBackend(base, None))  # type: ignore[arg-type]


def test_vllm_samples_with_the_loaded_adapter_as_the_merged_model_does(
        base: Path, adapter_model: torch.nn.Module, tmp_path: Path) -> None:
    """vLLM's log-probabilities of its own samples under the adapter it loaded are the
    merged model's (bfloat16 in vLLM, so to bfloat16 accuracy)."""
    pytest.importorskip("vllm", reason="vLLM is an optional extra")
    if not torch.cuda.is_available():
        pytest.skip("vLLM runs on a GPU")
    from roles.generation import SamplingParams
    from roles.vllm_backend import VllmBackend

    backend = VllmBackend(base, dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.2, lora=SETTINGS)
    VllmAdapterLoader(backend)(adapter_state(adapter_model).items())
    assert backend.adapter is not None and len(backend._adapter_versions.versions()) == 1  # type: ignore[union-attr]
    prompts = [[3, 5, 7], [6, 8]]
    output = backend.generate(prompts, SamplingParams(max_new_tokens=6, ignore_eos=True, seed=0))
    for row, prompt in enumerate(prompts):
        response = output.response_ids[row, : int(output.response_mask[row].sum())]
        with torch.no_grad():
            logits = adapter_model(input_ids=torch.tensor([prompt + response.tolist()])).logits[0].float()
        expected = logits[len(prompt) - 1: -1].log_softmax(-1).gather(-1, response[:, None])[:, 0]
        torch.testing.assert_close(output.logprobs[row, : len(response)], expected, rtol=0, atol=0.05)


def test_the_stand_in_backend_reads_only_what_a_real_vllm_backend_offers() -> None:
    from roles.vllm_backend import VllmBackend

    assert "lora" in inspect.signature(VllmBackend).parameters
    assert list(inspect.signature(VllmBackend.load_adapter).parameters) == ["self", "named", "version"]
