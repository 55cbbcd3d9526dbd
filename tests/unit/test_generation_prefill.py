"""`HFBackend` prefills each distinct prompt of a micro-batch once and copies its keys and
values to the prompt's rows: the samples are those of a prefill per row."""

from __future__ import annotations

import pytest
import torch

from roles.generation import HFBackend
from roles.sampling import GenerationRequest, SamplingParams
from tests.unit.test_generation import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (one_thread: autouse)


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    return HFBackend(tiny_model().eval(), tokenizer)


def prompt_ids(backend: HFBackend, texts: list[str]) -> list[list[int]]:
    return [backend.tokenizer(text).input_ids for text in texts]


def prefill_rows(backend: HFBackend, run) -> list[int]:  # type: ignore[no-untyped-def]
    """The batch size of every forward with more than one position (a prefill) during `run`."""
    sizes: list[int] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]) if kwargs["input_ids"].shape[1] > 1 else None,
        with_kwargs=True,
    )
    try:
        run()
    finally:
        hook.remove()
    return sizes


def test_the_samples_of_one_prompt_share_one_prefill(backend: HFBackend) -> None:
    prompts = prompt_ids(backend, ["hello", "what is 2+2?"])
    sizes = prefill_rows(backend, lambda: backend.generate(prompts, SamplingParams(n=4, max_new_tokens=3, seed=0)))
    assert sizes == [2]


def test_identical_prompts_of_different_requests_share_a_prefill_too(backend: HFBackend) -> None:
    prompts = prompt_ids(backend, ["hello", "abc"])
    requests = [GenerationRequest(prompts, SamplingParams(n=2, max_new_tokens=3, seed=1)),
                GenerationRequest(prompts[:1], SamplingParams(n=1, max_new_tokens=3, temperature=0.5))]
    sizes = prefill_rows(backend, lambda: backend.generate_requests(requests))
    assert sizes == [2]


def test_shared_prefill_rows_sample_what_a_prompt_alone_samples(backend: HFBackend) -> None:
    prompts = prompt_ids(backend, ["hello", "what is 2+2?", "a"])
    greedy = SamplingParams(top_k=1, max_new_tokens=8)
    together = backend.generate(prompts, greedy.model_copy(update={"n": 3}))
    for index, prompt in enumerate(prompts):
        alone = backend.generate([prompt], greedy)
        length = int(alone.response_mask.sum())
        for row in range(3 * index, 3 * index + 3):
            assert together.response_ids[row, :length].tolist() == alone.response_ids[0, :length].tolist()
            torch.testing.assert_close(together.logprobs[row, :length], alone.logprobs[0, :length], atol=1e-5, rtol=0)


def test_under_the_generators_autocast_the_sampling_forward_computes_in_bfloat16(backend: HFBackend) -> None:
    # GeneratorConfig.autocast: the generator's compute thread samples inside autocast_for
    from roles.models import autocast_for

    dtypes: list[torch.dtype] = []
    hook = backend.model.get_output_embeddings().register_forward_hook(lambda _, args, out: dtypes.append(out.dtype))
    prompts = prompt_ids(backend, ["hello"])
    try:
        with autocast_for("cpu", "bfloat16"):
            sampled = backend.generate(prompts, SamplingParams(n=2, max_new_tokens=3, seed=0, ignore_eos=True))
        backend.generate(prompts, SamplingParams(n=2, max_new_tokens=3, seed=0, ignore_eos=True))
    finally:
        hook.remove()
    steps = len(dtypes) // 2
    assert set(dtypes[:steps]) == {torch.bfloat16} and set(dtypes[steps:]) == {torch.float32}
    assert sampled.logprobs.dtype == torch.float32 and bool((sampled.logprobs <= 0).all())
