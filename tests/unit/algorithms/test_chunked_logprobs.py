"""roles/algorithms/chunked_logprobs.py: the same numbers and gradients as the whole
logits give, a chunk of tokens at a time."""

import math

import pytest
import torch

from roles.algorithms import entropy_from_logits, logprobs_from_logits
from roles.algorithms.chunked_logprobs import chunked_token_logprobs, default_chunk_tokens


def whole(hidden, weight, token_ids, bias=None, temperature=1.0):  # type: ignore[no-untyped-def]
    """The simple version: every logit at once."""
    logits = (hidden @ weight.T + (bias if bias is not None else 0)) / temperature
    return logprobs_from_logits(logits[None], token_ids[None])[0], entropy_from_logits(logits)


def inputs(rows=11, width=6, vocab=23, seed=0):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=generator)
    weight = torch.randn(vocab, width, generator=generator)
    bias = torch.randn(vocab, generator=generator)
    token_ids = torch.randint(0, vocab, (rows,), generator=generator)
    return hidden, weight, bias, token_ids


def test_logprob_and_entropy_of_a_hand_computed_three_token_vocabulary():
    # logits [2, 0, 0] at temperature 2 -> scaled [1, 0, 0]
    hidden = torch.tensor([[2.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    normalizer = math.log(math.e + 2)
    p_first = math.e / (math.e + 2)

    result = chunked_token_logprobs(hidden, weight, torch.tensor([0]), temperature=2.0, with_entropy=True)

    torch.testing.assert_close(result.logprobs, torch.tensor([1.0 - normalizer]))
    torch.testing.assert_close(result.entropy, torch.tensor([normalizer - p_first * 1.0]))


@pytest.mark.parametrize("chunk_tokens", [1, 3, 4, 11, 100])
def test_values_equal_the_whole_logits_for_any_chunk_size(chunk_tokens):
    hidden, weight, bias, token_ids = inputs()
    expected_logprobs, expected_entropy = whole(hidden, weight, token_ids, bias, temperature=0.7)

    result = chunked_token_logprobs(hidden, weight, token_ids, bias=bias, temperature=0.7, with_entropy=True,
                                    chunk_tokens=chunk_tokens)

    torch.testing.assert_close(result.logprobs, expected_logprobs)
    torch.testing.assert_close(result.entropy, expected_entropy)
    assert result.logprobs.dtype == torch.float32


@pytest.mark.parametrize("chunk_tokens", [1, 4, 100])
def test_gradients_equal_the_whole_logits_gradients(chunk_tokens):
    hidden, weight, bias, token_ids = inputs()
    upstream_logprobs, upstream_entropy = torch.randn(2, hidden.shape[0], generator=torch.Generator().manual_seed(1))
    leaves = [tensor.clone().requires_grad_() for tensor in (hidden, weight, bias)]
    expected_logprobs, expected_entropy = whole(leaves[0], leaves[1], token_ids, leaves[2], temperature=0.7)
    expected = torch.autograd.grad((expected_logprobs * upstream_logprobs + expected_entropy * upstream_entropy).sum(), leaves)

    chunked_leaves = [tensor.clone().requires_grad_() for tensor in (hidden, weight, bias)]
    result = chunked_token_logprobs(chunked_leaves[0], chunked_leaves[1], token_ids, bias=chunked_leaves[2],
                                    temperature=0.7, with_entropy=True, chunk_tokens=chunk_tokens)
    gradients = torch.autograd.grad((result.logprobs * upstream_logprobs + result.entropy * upstream_entropy).sum(),
                                    chunked_leaves)

    for got, want in zip(gradients, expected):
        torch.testing.assert_close(got, want)


def test_gradients_of_the_logprobs_alone_need_no_entropy():
    hidden, weight, _, token_ids = inputs()
    leaf = hidden.clone().requires_grad_()
    expected = torch.autograd.grad(whole(leaf, weight, token_ids)[0].sum(), leaf)[0]

    chunked_leaf = hidden.clone().requires_grad_()
    result = chunked_token_logprobs(chunked_leaf, weight, token_ids, chunk_tokens=3)

    assert result.entropy is None
    torch.testing.assert_close(torch.autograd.grad(result.logprobs.sum(), chunked_leaf)[0], expected)


def test_without_a_weight_the_rows_are_the_logits():
    logits, _, _, token_ids = inputs(width=23)
    leaf = logits.clone().requires_grad_()
    expected_logprobs, expected_entropy = whole(leaf, torch.eye(23), token_ids, temperature=1.5)
    expected = torch.autograd.grad((expected_logprobs + expected_entropy).sum(), leaf)[0]

    chunked_leaf = logits.clone().requires_grad_()
    result = chunked_token_logprobs(chunked_leaf, None, token_ids, temperature=1.5, with_entropy=True, chunk_tokens=4)

    torch.testing.assert_close(result.logprobs, expected_logprobs)
    torch.testing.assert_close(result.entropy, expected_entropy)
    torch.testing.assert_close(torch.autograd.grad((result.logprobs + result.entropy).sum(), chunked_leaf)[0], expected)


def test_under_bfloat16_autocast_the_matmul_is_bfloat16_and_the_softmax_float32():
    hidden, weight, _, token_ids = inputs(vocab=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = chunked_token_logprobs(hidden, weight, token_ids, with_entropy=True, chunk_tokens=4)
    rounded = whole(hidden.bfloat16().float(), weight.bfloat16().float(), token_ids)

    assert result.logprobs.dtype == torch.float32
    torch.testing.assert_close(result.logprobs, rounded[0], atol=0.05, rtol=0.01)
    torch.testing.assert_close(result.entropy, rounded[1], atol=0.05, rtol=0.01)


def test_default_chunk_holds_about_32_mib_of_float32_logits():
    assert default_chunk_tokens(49_152) == 170
    assert default_chunk_tokens(10**9) == 1


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"hidden": torch.zeros(2, 3), "weight": torch.zeros(5, 4), "token_ids": torch.zeros(2, dtype=torch.long)}, "weight"),
        ({"hidden": torch.zeros(2, 3), "weight": torch.zeros(5, 3), "token_ids": torch.zeros(3, dtype=torch.long)}, "token_ids"),
        ({"hidden": torch.zeros(2, 3), "weight": torch.zeros(5, 3), "token_ids": torch.zeros(2)}, "token_ids"),
        ({"hidden": torch.zeros(2, 3), "weight": torch.zeros(5, 3), "token_ids": torch.zeros(2, dtype=torch.long),
          "temperature": 0.0}, "temperature"),
        ({"hidden": torch.zeros(2, 3), "weight": torch.zeros(5, 3), "token_ids": torch.zeros(2, dtype=torch.long),
          "chunk_tokens": 0}, "chunk_tokens"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(arguments, named):
    with pytest.raises(ValueError, match=named):
        chunked_token_logprobs(**arguments)
