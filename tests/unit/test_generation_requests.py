"""`HFBackend.generate_requests` (several requests, each with its own sampling
parameters, in shared micro-batches), the ``on_step`` callback and ``ignore_eos``, on
the tiny Qwen2 of test_generation."""

from __future__ import annotations

import pytest
import torch

from roles.generation import HFBackend
from roles.models import load_causal_lm
from roles.sampling import DecodingStep, GenerationOutput, GenerationRequest, SamplingParams
from roles.vllm_backend import replay_steps
from tests.unit.test_generation import EOS, PROMPT_TEXTS, one_thread, tiny_model, tiny_tokenizer  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return load_causal_lm(path)


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:  # type: ignore[no-untyped-def]
    _, tokenizer = loaded
    return [tokenizer(text).input_ids for text in PROMPT_TEXTS]


def backend_for(loaded, micro_batch: int = 64) -> HFBackend:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    return HFBackend(model, tokenizer, micro_batch=micro_batch)


def responses(output: GenerationOutput) -> list[list[int]]:
    return [ids[: int(mask.sum())].tolist() for ids, mask in zip(output.response_ids, output.response_mask)]


def test_one_request_through_generate_requests_is_generate(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=7, seed=4)
    [alone] = backend_for(loaded, micro_batch=4).generate_requests([GenerationRequest(prompts, params)])
    direct = backend_for(loaded, micro_batch=4).generate(prompts, params)
    assert torch.equal(alone.response_ids, direct.response_ids) and torch.equal(alone.logprobs, direct.logprobs)
    assert alone.texts == direct.texts and alone.finish_reasons == direct.finish_reasons


def test_a_seeded_request_samples_the_same_whatever_shares_its_batch(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    seeded = GenerationRequest(prompts[:2], SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=3))
    others = [GenerationRequest(prompts[2:], SamplingParams(top_k=1, max_new_tokens=3)),
              GenerationRequest(prompts[:1], SamplingParams(n=3, temperature=1.5, max_new_tokens=10, seed=99))]
    [alone] = backend_for(loaded).generate_requests([seeded])
    _, shared, _ = backend_for(loaded).generate_requests([others[0], seeded, others[1]])
    assert responses(shared) == responses(alone)
    torch.testing.assert_close(shared.logprobs, alone.logprobs, atol=1e-5, rtol=0)


def test_each_request_keeps_its_own_token_limit_stop_strings_and_greediness(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    backend = backend_for(loaded, micro_batch=2)
    [greedy] = backend.generate_requests([GenerationRequest(prompts, SamplingParams(top_k=1, max_new_tokens=12))])
    stop = greedy.texts[1][2:4]
    # the two greedy requests are unseeded like the hot one between them: they are drawn
    # together, apart from it
    short, hot, stopped, sampled = backend.generate_requests([
        GenerationRequest(prompts, SamplingParams(top_k=1, max_new_tokens=3)),
        GenerationRequest(prompts[:1], SamplingParams(n=3, temperature=3.0, max_new_tokens=12)),
        GenerationRequest(prompts[1:2], SamplingParams(top_k=1, max_new_tokens=12, stop=[stop])),
        GenerationRequest(prompts[:1], SamplingParams(n=4, max_new_tokens=12, seed=1)),
    ])
    assert [ids[:3] for ids in responses(greedy)] == responses(short)
    assert len(responses(hot)) == 3 and responses(hot) != [responses(greedy)[0]] * 3
    assert short.finish_reasons == ["length"] * 3
    assert stopped.texts == [greedy.texts[1][: greedy.texts[1].find(stop)]] and stopped.finish_reasons == ["stop"]
    assert len(set(sampled.texts)) > 1  # sampled, not greedy


def test_the_step_callback_sees_every_token_as_drawn_and_each_row_end(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    steps: list[DecodingStep] = []
    outputs = backend_for(loaded, micro_batch=3).generate_requests([
        GenerationRequest(prompts, SamplingParams(n=2, max_new_tokens=5, seed=0)),
        GenerationRequest(prompts[:1], SamplingParams(top_k=1, max_new_tokens=9)),
    ], on_step=steps.append)
    rows = [row for output in outputs for row in responses(output)]
    reasons = [reason for output in outputs for reason in output.finish_reasons]
    seen: dict[int, list[int]] = {}
    ended: dict[int, str] = {}
    for step in steps:
        assert not set(step.tokens) & set(ended), "a token came for a row that had ended"
        for row, token in step.tokens.items():
            seen.setdefault(row, []).append(token)
        assert set(step.finished) <= set(step.tokens)
        ended.update(step.finished)
    assert [seen[row] for row in range(len(rows))] == rows
    assert [ended[row] for row in range(len(rows))] == reasons


def test_ignore_eos_runs_to_the_token_limit(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    # eos is the most likely token everywhere: without ignore_eos every row ends at once
    forced = tiny_model()
    forced.load_state_dict(model.state_dict())
    with torch.no_grad():
        forced.lm_head.bias = torch.nn.Parameter(torch.zeros(forced.config.vocab_size))
        forced.lm_head.bias[EOS] = 100.0
    backend = HFBackend(forced.eval(), tokenizer)
    stopping, ignoring = backend.generate_requests([
        GenerationRequest(prompts, SamplingParams(top_k=1, max_new_tokens=6)),
        GenerationRequest(prompts, SamplingParams(top_k=1, max_new_tokens=6, ignore_eos=True)),
    ])
    assert responses(stopping) == [[EOS]] * 3 and stopping.finish_reasons == ["stop"] * 3
    assert responses(ignoring) == [[EOS] * 6] * 3 and ignoring.finish_reasons == ["length"] * 3
    assert ignoring.texts == [""] * 3  # eos is a special token: the text leaves it out


def test_replayed_steps_rebuild_finished_outputs(loaded, prompts) -> None:  # type: ignore[no-untyped-def]
    outputs = backend_for(loaded).generate_requests([
        GenerationRequest(prompts, SamplingParams(max_new_tokens=6, seed=2)),
        GenerationRequest(prompts[:1], SamplingParams(n=2, max_new_tokens=3, seed=5)),
    ])
    steps: list[DecodingStep] = []
    replay_steps(outputs, steps.append)
    seen: dict[int, list[int]] = {}
    ended: dict[int, str] = {}
    for step in steps:
        for row, token in step.tokens.items():
            seen.setdefault(row, []).append(token)
        ended.update(step.finished)
    assert [seen[row] for row in range(5)] == [row for output in outputs for row in responses(output)]
    assert [ended[row] for row in range(5)] == [reason for output in outputs for reason in output.finish_reasons]


def test_no_requests_give_no_outputs(loaded) -> None:  # type: ignore[no-untyped-def]
    assert backend_for(loaded).generate_requests([]) == []

