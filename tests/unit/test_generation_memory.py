"""`response_logprobs` on a large vocabulary: the same numbers and gradients as the whole
logits give, without ever holding the [N, R, V] float32 logits, forward or backward."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from roles.algorithms import entropy_from_logits, logprobs_from_logits
from roles.logprobs import logits_are_output_layer, response_logprobs

REPO = Path(__file__).resolve().parents[2]


def tiny_llama(vocab_size: int = 97, tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied, pad_token_id=0)
    return LlamaForCausalLM(config)


def rollouts(vocab_size: int, rows: int = 3, prompt: int = 5, response: int = 7):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(1, vocab_size, (rows, prompt), generator=generator)
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    response_ids = torch.randint(1, vocab_size, (rows, response), generator=generator)
    response_mask = torch.ones(rows, response)
    response_mask[1, 4:] = 0  # right padding
    return prompt_ids, prompt_mask, response_ids, response_mask


def whole_logits(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature):  # type: ignore[no-untyped-def]
    """The simple version: the model's full logits, then log_softmax."""
    attention_mask = torch.cat([prompt_mask, (response_mask > 0).long()], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=torch.cat([prompt_ids, response_ids], dim=1), attention_mask=attention_mask,
                   position_ids=positions).logits[:, prompt_ids.shape[1] - 1 : -1] / temperature
    valid = response_mask > 0
    logprobs = logprobs_from_logits(logits, response_ids)
    return torch.where(valid, logprobs, 0.0), torch.where(valid, entropy_from_logits(logits), 0.0)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("logits_from_the_model", [False, True], ids=["output-layer-in-chunks", "model-logits"])
def test_logprobs_entropy_and_gradients_equal_the_whole_logits(tied, logits_from_the_model):
    model = tiny_llama(tied=tied)
    if logits_from_the_model:  # as for a model that post-processes its logits (Gemma 2's soft cap)
        model.config.final_logit_softcapping = 30.0
    assert logits_are_output_layer(model) is not logits_from_the_model
    batch = rollouts(97)
    upstream = torch.randn(2, *batch[2].shape, generator=torch.Generator().manual_seed(2))

    expected = whole_logits(model, *batch, temperature=0.8)
    expected_gradients = torch.autograd.grad((expected[0] * upstream[0] + expected[1] * upstream[1]).sum(),
                                             list(model.parameters()))
    logprobs, entropy = response_logprobs(model, *batch, temperature=0.8, with_entropy=True, chunk_tokens=4)
    gradients = torch.autograd.grad((logprobs * upstream[0] + entropy * upstream[1]).sum(), list(model.parameters()))

    torch.testing.assert_close(logprobs, expected[0])
    torch.testing.assert_close(entropy, expected[1])
    for got, want in zip(gradients, expected_gradients):
        torch.testing.assert_close(got, want)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the real output layer is back


def test_the_output_layer_is_restored_when_the_forward_fails():
    model = tiny_llama()
    layer = model.get_output_embeddings()
    prompt_ids, prompt_mask, response_ids, response_mask = rollouts(97)
    with pytest.raises(IndexError):
        response_logprobs(model, prompt_ids, prompt_mask, response_ids + 1000, response_mask)
    assert model.get_output_embeddings() is layer


PEAK_SCRIPT = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
sys.path.insert(0, {repo!r})
from roles.logprobs import response_logprobs

def megabytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
torch.manual_seed(0)
config = LlamaConfig(vocab_size={vocab}, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, pad_token_id=0)
model = LlamaForCausalLM(config)
rows, prompt, response = {rows}, 8, {response}
prompt_ids = torch.randint(1, {vocab}, (rows, prompt))
response_ids = torch.randint(1, {vocab}, (rows, response))
masks = torch.ones(rows, prompt, dtype=torch.long), torch.ones(rows, response)
small = response_logprobs(model, prompt_ids[:1], masks[0][:1], response_ids[:1, :2], masks[1][:1, :2], with_entropy=True)
(small[0].sum() + small[1].sum()).backward()  # the weights' gradients exist before measuring
open("/proc/self/clear_refs", "w").write("5")  # resets the peak resident set to the current one
before = megabytes("VmRSS")
logprobs, entropy = response_logprobs(model, prompt_ids, masks[0], response_ids, masks[1], temperature=0.7,
                                      with_entropy=True, chunk_tokens={chunk})
(logprobs.sum() - 0.01 * entropy.sum()).backward()
print(json.dumps({{"peak_over_start_mb": megabytes("VmHWM") - before}}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak resident set through Linux's /proc")
def test_logprobs_and_their_backward_on_a_200k_vocabulary_stay_far_below_the_whole_logits():
    vocab, rows, response = 200_000, 16, 64
    whole_mb = rows * (response + 1) * vocab * 4 / 2**20  # one float32 copy of the kept logits: 793 MiB
    script = PEAK_SCRIPT.format(repo=str(REPO), vocab=vocab, rows=rows, response=response, chunk=8)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_over_start_mb"]
    # what remains: a chunk's few [8, V] temporaries (6 MiB each) and a few [V, H] gradients (12 MiB each)
    assert peak < whole_mb / 4, f"peak {peak:.0f} MiB over the start; the whole logits are {whole_mb:.0f} MiB"
