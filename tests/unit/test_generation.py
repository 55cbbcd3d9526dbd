"""roles/generation.py (and the sampling types and vLLM helpers beside it) on a tiny
Qwen2 with a character-level tokenizer, saved to disk and loaded back through
`load_causal_lm`."""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from roles.generation import HFBackend
from roles.models import load_causal_lm
from roles.sampling import GenerationBackend, SamplingParams, truncate_logits
from roles.vllm_backend import VllmBackend, outputs_from_vllm, vllm_sampling_arguments
from roles.logprobs import response_logprobs

PAD, EOS = 0, 1
CHARACTERS = string.ascii_lowercase + string.digits + " .,!?+-=*/" + string.ascii_uppercase[:15]
PROMPT_TEXTS = ["hello", "a", "what is 2+2?"]
MAX_NEW_TOKENS = 12


def tiny_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """One token per character: 3 special tokens and 61 characters, 64 in all."""
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": 2, **{char: 3 + index for index, char in enumerate(CHARACTERS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    special = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="<unk>", **special)


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    # the tiny model's kernels take microseconds: on a busy machine, waking a second
    # intra-op thread for each of them makes a forward a hundred times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir: Path):  # type: ignore[no-untyped-def]
    return load_causal_lm(model_dir)


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:  # type: ignore[no-untyped-def]
    _, tokenizer = loaded
    return [tokenizer(text).input_ids for text in PROMPT_TEXTS]


@pytest.fixture(scope="module")
def greedy(loaded, prompts):  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    return HFBackend(model, tokenizer).generate(prompts, SamplingParams(top_k=1, max_new_tokens=MAX_NEW_TOKENS))


@pytest.fixture(scope="module")
def eos_forced(model_dir: Path, greedy):  # type: ignore[no-untyped-def]
    """The tiny model with eos's lm_head row a scaled copy of the row of the token greedy
    decoding of prompt 0 picks second: where the model would pick that token, it ends."""
    model, tokenizer = load_causal_lm(model_dir)
    token = int(greedy.response_ids[0, 1])
    with torch.no_grad():
        model.lm_head.weight[EOS] = 3.0 * model.lm_head.weight[token]
    return model, tokenizer


def backend_for(loaded, micro_batch: int = 64) -> HFBackend:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    return HFBackend(model, tokenizer, micro_batch=micro_batch)


def lengths(output) -> list[int]:  # type: ignore[no-untyped-def]
    return output.response_mask.sum(dim=1).long().tolist()


def test_the_hf_backend_is_a_generation_backend(loaded) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(backend_for(loaded), GenerationBackend)


def test_rows_are_prompt_major_with_left_padded_prompts_and_right_padded_responses(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    output = backend_for(loaded, micro_batch=4).generate(prompts, SamplingParams(n=3, max_new_tokens=8, seed=1))
    rows, width = 9, max(map(len, prompts))
    assert output.prompt_ids.shape == output.prompt_mask.shape == (rows, width)
    assert output.response_ids.shape == output.response_mask.shape == output.logprobs.shape
    assert output.prompt_ids.dtype == output.response_ids.dtype == output.prompt_mask.dtype == torch.long
    assert output.response_mask.dtype == output.logprobs.dtype == torch.float32
    assert len(output.texts) == len(output.finish_reasons) == rows
    for row in range(rows):
        prompt = prompts[row // 3]
        assert output.prompt_ids[row, width - len(prompt):].tolist() == prompt
        assert output.prompt_ids[row, : width - len(prompt)].eq(PAD).all()
        assert output.prompt_mask[row].tolist() == [0] * (width - len(prompt)) + [1] * len(prompt)
    length = torch.tensor(lengths(output))
    assert output.response_ids.shape[1] == int(length.max())
    steps = torch.arange(output.response_ids.shape[1])
    assert torch.equal(output.response_mask, (steps < length[:, None]).float())
    assert output.response_ids[output.response_mask == 0].eq(PAD).all()
    assert output.logprobs[output.response_mask == 0].eq(0).all()
    assert output.logprobs[output.response_mask == 1].lt(0).all()


def test_generator_logprobs_equal_a_one_forward_recomputation(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    params = SamplingParams(n=2, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=MAX_NEW_TOKENS, seed=7)
    output = backend_for(loaded, micro_batch=4).generate(prompts, params)
    with torch.no_grad():
        recomputed, _ = response_logprobs(model, output.prompt_ids, output.prompt_mask, output.response_ids,
                                          output.response_mask, temperature=0.7)
    torch.testing.assert_close(recomputed, output.logprobs, atol=1e-5, rtol=0)


def test_logprobs_and_entropy_match_each_row_computed_alone_without_padding(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    temperature = 0.7
    output = backend_for(loaded).generate(prompts, SamplingParams(n=2, temperature=temperature, max_new_tokens=6, seed=3))
    with torch.no_grad():
        logprobs, entropy = response_logprobs(model, output.prompt_ids, output.prompt_mask, output.response_ids,
                                              output.response_mask, temperature=temperature, with_entropy=True)
        assert entropy is not None and entropy.ge(0).all()
        assert entropy[output.response_mask == 0].eq(0).all()
        for row, length in enumerate(lengths(output)):
            prompt = output.prompt_ids[row][output.prompt_mask[row] == 1]
            response = output.response_ids[row, :length]
            logits = model(input_ids=torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1 : -1]
            log_probs = torch.log_softmax(logits / temperature, dim=-1)
            expected_entropy = -(log_probs.exp() * log_probs).sum(-1)
            torch.testing.assert_close(entropy[row, :length], expected_entropy, atol=1e-5, rtol=0)
            torch.testing.assert_close(logprobs[row, :length], log_probs[torch.arange(length), response], atol=1e-5, rtol=0)
            torch.testing.assert_close(output.logprobs[row, :length], log_probs[torch.arange(length), response],
                                       atol=1e-5, rtol=0)


def test_recomputed_logprobs_backpropagate_through_generator_outputs(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    output = backend_for(loaded).generate(prompts, SamplingParams(max_new_tokens=4, seed=0))
    assert not output.logprobs.is_inference() and not output.response_mask.is_inference()
    logprobs, entropy = response_logprobs(model, output.prompt_ids, output.prompt_mask, output.response_ids,
                                          output.response_mask, with_entropy=True)
    ratio = torch.exp(logprobs - output.logprobs)
    assert entropy is not None
    ((ratio * output.response_mask).sum() + entropy.sum()).backward()
    gradient = model.lm_head.weight.grad
    assert gradient is not None and gradient.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_the_same_seed_gives_the_same_samples_and_other_seeds_differ(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    backend = backend_for(loaded, micro_batch=4)
    first, again, other = (backend.generate(prompts, SamplingParams(n=2, max_new_tokens=8, seed=seed))
                           for seed in (11, 11, 12))
    assert torch.equal(first.response_ids, again.response_ids) and first.texts == again.texts
    assert torch.equal(first.logprobs, again.logprobs)
    assert first.texts != other.texts


@pytest.mark.parametrize("which", ["plain", "eos_forced"])
def test_greedy_decoding_matches_transformers_generate_row_by_row(request, which, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = request.getfixturevalue("loaded" if which == "plain" else "eos_forced")
    output = HFBackend(model, tokenizer).generate(prompts, SamplingParams(top_k=1, max_new_tokens=MAX_NEW_TOKENS))
    for row, (prompt, length) in enumerate(zip(prompts, lengths(output))):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=PAD)
        assert output.response_ids[row, :length].tolist() == reference[0, len(prompt):].tolist()


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_picks_the_argmax_at_any_temperature(loaded, prompts, greedy, temperature) -> None:  # type: ignore[no-untyped-def]
    output = backend_for(loaded).generate(
        prompts, SamplingParams(n=2, top_k=1, temperature=temperature, max_new_tokens=MAX_NEW_TOKENS, seed=5),
    )
    assert torch.equal(output.response_ids, greedy.response_ids.repeat_interleave(2, dim=0))


def test_a_tiny_top_p_decodes_greedily(loaded, prompts, greedy) -> None:  # type: ignore[no-untyped-def]
    output = backend_for(loaded).generate(prompts, SamplingParams(top_p=1e-6, max_new_tokens=MAX_NEW_TOKENS, seed=5))
    assert torch.equal(output.response_ids, greedy.response_ids)


def test_truncation_keeps_the_top_k_then_the_top_p_nucleus() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).log()  # probabilities 0.5, 0.3, 0.2, 0
    minus_infinity = float("-inf")
    top_two = truncate_logits(logits, top_k=2, top_p=1.0)
    torch.testing.assert_close(top_two, torch.tensor([[0.5, 0.3, 0.0, 0.0]]).log())
    assert truncate_logits(logits, top_k=0, top_p=0.5)[0, 1:].eq(minus_infinity).all()  # 0.5 alone reaches 0.5
    torch.testing.assert_close(truncate_logits(logits, top_k=0, top_p=0.6), top_two)  # 0.5 + 0.3 reaches 0.6
    torch.testing.assert_close(truncate_logits(logits, top_k=0, top_p=1.0), logits)


def test_eos_ends_a_row_and_later_steps_are_padding(eos_forced, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = eos_forced
    output = HFBackend(model, tokenizer, micro_batch=2).generate(
        prompts, SamplingParams(n=2, top_k=1, max_new_tokens=MAX_NEW_TOKENS),
    )
    assert output.finish_reasons[:2] == ["stop", "stop"]
    for row, (length, reason) in enumerate(zip(lengths(output), output.finish_reasons)):
        ends_with_eos = output.response_ids[row, length - 1] == EOS
        assert (reason == "stop") == bool(ends_with_eos)
        assert reason == "stop" or length == MAX_NEW_TOKENS
        assert EOS not in output.response_ids[row, : length - 1].tolist()
        assert output.response_ids[row, length:].eq(PAD).all() and output.response_mask[row, length:].eq(0).all()
        assert output.texts[row] == tokenizer.decode(output.response_ids[row, :length], skip_special_tokens=True)
    assert lengths(output)[0] < MAX_NEW_TOKENS


def test_max_new_tokens_ends_rows_with_length(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    output = backend_for(loaded).generate(prompts, SamplingParams(top_k=1, max_new_tokens=5))
    assert output.response_ids.shape == (3, 5)
    assert output.response_mask.eq(1).all()
    assert output.finish_reasons == ["length"] * 3


def test_a_stop_string_ends_the_row_at_the_token_completing_it(loaded, prompts, greedy) -> None:  # type: ignore[no-untyped-def]
    text = greedy.texts[0]
    assert len(text) == MAX_NEW_TOKENS  # one character per token, no special tokens
    stop = text[3:5]
    output = backend_for(loaded).generate(prompts, SamplingParams(top_k=1, max_new_tokens=MAX_NEW_TOKENS,
                                                                  stop=["never", stop]))
    cut = text.find(stop)
    assert output.texts[0] == text[:cut]
    assert output.finish_reasons[0] == "stop"
    assert lengths(output)[0] == cut + len(stop)
    assert torch.equal(output.response_ids[0, : cut + len(stop)], greedy.response_ids[0, : cut + len(stop)])
    for row in (1, 2):  # the other rows end at their own first stop string, or run to the end
        assert stop not in output.texts[row]
        assert output.texts[row] == greedy.texts[row][: len(output.texts[row])]
        assert (output.finish_reasons[row] == "stop") == (stop in greedy.texts[row])


def test_prompts_may_be_tensors(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(n=2, max_new_tokens=4, seed=2)
    from_lists = backend_for(loaded).generate(prompts, params)
    from_tensors = backend_for(loaded).generate([torch.tensor(prompt) for prompt in prompts], params)
    assert torch.equal(from_tensors.prompt_ids, from_lists.prompt_ids)
    assert torch.equal(from_tensors.response_ids, from_lists.response_ids)


def test_an_empty_prompt_is_refused(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least one token"):
        backend_for(loaded).generate([[5, 6], []], SamplingParams())


@pytest.mark.parametrize("bad", [
    {"n": 0}, {"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0},
    {"stop": [""]}, {"beam_width": 4},
])
def test_bad_sampling_params_are_refused(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        SamplingParams(**bad)


def test_sampling_params_document_every_field() -> None:
    assert all(field.description for field in SamplingParams.model_fields.values())


def test_loading_a_missing_or_incomplete_directory_says_what_is_wrong(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_causal_lm(model_dir, dtype="float8")


def test_loading_pads_on_the_left_with_eos_when_the_tokenizer_has_no_pad_token(tmp_path: Path) -> None:
    # a Llama directory: for a Qwen2 one, transformers' Qwen2 tokenizer adds a pad token of its own
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, eos_token_id=EOS, bos_token_id=None, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer(with_pad=False).save_pretrained(tmp_path)
    model, tokenizer = load_causal_lm(tmp_path)
    assert not model.training
    assert tokenizer.pad_token_id == EOS and tokenizer.padding_side == "left"


# vLLM cannot run on the machines these tests were written on: what needs it is skipped
# without it, and its output structure is stood in for below.

VLLM_MISSING = importlib.util.find_spec("vllm") is None


@pytest.mark.skipif(not VLLM_MISSING, reason="vLLM is installed")
def test_the_vllm_backend_without_vllm_says_how_to_install_it(model_dir: Path) -> None:
    with pytest.raises(ImportError, match=r"pip install troupe-rl\[vllm\]"):
        VllmBackend(model_dir)


def test_vllm_request_outputs_become_prompt_major_padded_rows() -> None:
    def completion(index: int, tokens: list[int], reason: str, text: str) -> SimpleNamespace:
        logprobs = [{token: SimpleNamespace(logprob=-0.5 - position)} for position, token in enumerate(tokens)]
        return SimpleNamespace(index=index, token_ids=tokens, logprobs=logprobs, finish_reason=reason, text=text)

    requests = [
        SimpleNamespace(outputs=[completion(1, [7], "stop", "b"), completion(0, [5, 6, EOS], "stop", "a")]),
        SimpleNamespace(outputs=[completion(0, [8, 9], "length", "cd"), completion(1, [4, 4], "length", "ee")]),
    ]
    output = outputs_from_vllm([[3, 4, 5], [9]], requests, PAD)
    assert output.prompt_ids.tolist() == [[3, 4, 5], [3, 4, 5], [PAD, PAD, 9], [PAD, PAD, 9]]
    assert output.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert output.response_ids.tolist() == [[5, 6, EOS], [7, PAD, PAD], [8, 9, PAD], [4, 4, PAD]]
    assert output.response_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    torch.testing.assert_close(output.logprobs, torch.tensor([[-0.5, -1.5, -2.5], [-0.5, 0, 0], [-0.5, -1.5, 0],
                                                              [-0.5, -1.5, 0]]))
    assert output.texts == ["a", "b", "cd", "ee"]
    assert output.finish_reasons == ["stop", "stop", "length", "length"]


def test_sampling_params_map_onto_vllms() -> None:
    vllm = pytest.importorskip("vllm", reason="vLLM is an optional extra")
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=16, stop=["\n\n"], seed=3)
    arguments = vllm_sampling_arguments(params)
    assert arguments["top_k"] == -1 and arguments["max_tokens"] == 16 and arguments["logprobs"] == 0
    sampling = vllm.SamplingParams(**arguments)
    assert (sampling.n, sampling.temperature, sampling.top_p, sampling.seed) == (4, 0.7, 0.9, 3)
    assert sampling.stop == ["\n\n"]


def test_the_vllm_backend_reports_the_logprobs_a_recomputation_gives(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is an optional extra")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    torch.manual_seed(0)
    config = Qwen2Config(  # head_dim 64: a size every vLLM attention backend takes
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None,
        max_position_embeddings=256,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    backend = VllmBackend(tmp_path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=256)
    model, tokenizer = load_causal_lm(tmp_path, device="cuda")
    prompts = [tokenizer(text).input_ids for text in PROMPT_TEXTS]
    output = backend.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=0))
    assert output.response_ids.shape[0] == 6 and set(output.finish_reasons) <= {"stop", "length"}
    with torch.no_grad():
        recomputed, _ = response_logprobs(model, output.prompt_ids.cuda(), output.prompt_mask.cuda(),
                                          output.response_ids.cuda(), output.response_mask.cuda(), temperature=0.7)
    torch.testing.assert_close(recomputed.cpu(), output.logprobs, atol=1e-3, rtol=0)
    backend.load_weights(model.state_dict().items())
    backend.clear_caches()


def test_a_temperature_too_small_for_float32_logits_is_refused_with_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=1e-30)
    assert SamplingParams(temperature=1e-5).temperature == 1e-5


def test_the_names_imported_from_roles_generation_before_its_split_still_are():
    import roles.generation as generation
    import roles.models
    import roles.sampling
    import roles.vllm_backend

    homes = {
        roles.sampling: ["SamplingParams", "GenerationOutput", "GenerationRequest", "DecodingStep", "StepCallback",
                         "GenerationBackend", "cut_at_stop", "truncate_logits"],
        roles.models: ["load_causal_lm", "limit_cpu_threads", "autocast_for", "positions_from_mask"],
        roles.vllm_backend: ["VllmBackend", "outputs_from_vllm", "vllm_sampling_arguments", "replay_steps"],
    }
    for home, names in homes.items():
        for name in names:
            assert getattr(generation, name) is getattr(home, name), name
    assert generation.HFBackend.__module__ == "roles.generation"
