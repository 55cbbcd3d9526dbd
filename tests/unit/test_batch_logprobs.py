"""`batch_logprobs` leaves the padding columns no row uses out of the forward, and the
trainer orders a mini-batch by length before cutting micro-batches: the numbers are
those of the full-width forward, for less work. The reference and the trainer compute
log-probs through the same function: equal for the same model and batch."""

from __future__ import annotations

import pytest
import torch

from protocols.batch import Batch
from roles.logprobs import batch_logprobs, by_length, response_logprobs
from roles.reference import Reference, ReferenceConfig
from roles.trainer import Trainer, TrainerConfig
from tests.unit.test_generation import tiny_model


def rollout_batch(prompt_lengths: list[int], response_lengths: list[int], prompt_width: int, response_width: int,
                  vocab: int) -> Batch:
    """Rows left-padded to `prompt_width` and right-padded to `response_width` (wider
    than any row: the widths of a larger rollout batch)."""
    generator = torch.Generator().manual_seed(0)
    rows = len(prompt_lengths)
    prompt_ids = torch.zeros(rows, prompt_width, dtype=torch.long)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    response_ids = torch.zeros(rows, response_width, dtype=torch.long)
    response_mask = torch.zeros(rows, response_width, dtype=torch.float32)
    for row, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        prompt_ids[row, prompt_width - p:] = torch.randint(3, vocab, (p,), generator=generator)
        prompt_mask[row, prompt_width - p:] = 1
        response_ids[row, :r] = torch.randint(3, vocab, (r,), generator=generator)
        response_mask[row, :r] = 1
    return Batch(tensors={"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                          "response_ids": response_ids, "response_mask": response_mask})


def test_unused_padding_is_left_out_of_the_forward_and_the_results_are_those_of_the_full_width():
    model = tiny_model().eval()
    batch = rollout_batch([3, 5], [2, 4], prompt_width=9, response_width=10, vocab=model.config.vocab_size)
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        logprobs, entropy = batch_logprobs(model, batch, temperature=0.7, with_entropy=True)
    finally:
        hook.remove()
    assert widths == [5 + 4]  # the widest prompt and the longest response, not 9 + 10
    t = batch.tensors
    full, full_entropy = response_logprobs(model, t["prompt_ids"], t["prompt_mask"], t["response_ids"],
                                           t["response_mask"], 0.7, with_entropy=True)
    assert logprobs.shape == full.shape == (2, 10) and entropy is not None and full_entropy is not None
    torch.testing.assert_close(logprobs, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-5, rtol=1e-5)
    assert (logprobs[0, 2:] == 0).all() and (logprobs[1, 4:] == 0).all()


def test_gradients_flow_through_the_padded_back_results():
    model = tiny_model().train()
    batch = rollout_batch([4, 2], [3, 1], prompt_width=6, response_width=8, vocab=model.config.vocab_size)
    logprobs, _ = batch_logprobs(model, batch, temperature=1.0)
    logprobs.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_rows_are_ordered_from_the_shortest_to_the_longest_prompt_and_response_together():
    batch = rollout_batch([5, 1, 3, 2], [1, 1, 4, 6], prompt_width=5, response_width=6, vocab=50)
    assert by_length(batch).tolist() == [1, 0, 2, 3]  # totals 6, 2, 7, 8


@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_the_reference_and_the_trainer_give_equal_logprobs_of_the_same_model_and_batch(autocast):
    model = tiny_model().eval()
    batch = rollout_batch([3, 5, 1, 4, 2], [2, 4, 6, 1, 3], prompt_width=6, response_width=7,
                          vocab=model.config.vocab_size)
    reference = Reference("reference-0", ReferenceConfig(model="unused", micro_batch_size=2, autocast=autocast))
    trainer = Trainer("trainer-0", TrainerConfig(model="unused", update={"micro_batch_size": 2}, autocast=autocast))
    try:
        reference.model = trainer.model = model
        from_reference = reference._logprobs(batch, temperature=0.8)
        from_trainer = trainer._logprobs(batch, temperature=0.8)
    finally:
        reference.compute.shutdown()
        trainer.compute.shutdown()
    assert from_reference.shape == (5, 7) and from_reference.dtype == torch.float32
    assert torch.equal(from_reference, from_trainer)
    t = batch.tensors
    full, _ = response_logprobs(model, t["prompt_ids"], t["prompt_mask"], t["response_ids"], t["response_mask"], 0.8)
    if autocast is None:  # the numbers of one full-width forward
        torch.testing.assert_close(from_reference, full.detach(), atol=1e-5, rtol=1e-5)


def test_a_multi_turn_row_attends_to_its_observations_and_has_log_probs_on_sampled_tokens_only():
    """Response = turn 1 (3 sampled), an observation (2 tokens, not trained on), turn 2
    (2 sampled): the log-probs of turn 2 are those of a forward where turn 1 and the
    observation are part of the prompt, so the observation was read."""
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, model.config.vocab_size, (1, 4), generator=generator)
    response = torch.randint(3, model.config.vocab_size, (1, 7), generator=generator)
    sampled = torch.tensor([[1.0, 1, 1, 0, 0, 1, 1]])
    multi_turn = Batch(tensors={"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "response_ids": response,
                                "response_mask": sampled, "response_attention_mask": torch.ones_like(response)})
    logprobs, _ = batch_logprobs(model, multi_turn, temperature=1.0)

    assert (logprobs[0, 3:5] == 0).all() and (logprobs[0, [0, 1, 2, 5, 6]] != 0).all()
    first_turn = Batch(tensors={"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
                                "response_ids": response[:, :3], "response_mask": torch.ones(1, 3)})
    torch.testing.assert_close(logprobs[:, :3], batch_logprobs(model, first_turn, 1.0)[0])
    as_prompt = torch.cat([prompt, response[:, :5]], dim=1)
    second_turn = Batch(tensors={"prompt_ids": as_prompt, "prompt_mask": torch.ones_like(as_prompt),
                                 "response_ids": response[:, 5:], "response_mask": torch.ones(1, 2)})
    torch.testing.assert_close(logprobs[:, 5:], batch_logprobs(model, second_turn, 1.0)[0])
    # without the attention column the observation would be padding: turn 2 would read other tokens
    unread = Batch(tensors={**multi_turn.tensors, "response_attention_mask": sampled.long()})
    assert not torch.allclose(batch_logprobs(model, unread, 1.0)[0][:, 5:], logprobs[:, 5:])


def test_the_token_budget_and_the_unused_padding_count_a_multi_turn_rows_observations():
    from roles.micro_batches import row_extents

    batch = Batch(tensors={"prompt_ids": torch.ones(1, 2, dtype=torch.long), "prompt_mask": torch.ones(1, 2),
                           "response_ids": torch.ones(1, 6, dtype=torch.long),
                           "response_mask": torch.tensor([[1.0, 0, 0, 0, 0, 0]]),
                           "response_attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])})
    assert [int(extent) for extent in row_extents(batch)] == [2, 4]  # the observation's tokens are read
