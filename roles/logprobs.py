"""Log-probabilities and entropies of response tokens under a causal LM: what the
trainer and the reference compute for a rollout batch, and the forward's inputs (token
ids, attention mask, position ids of a left-padded prompt and right-padded response)
that the critic's value model reads too.

`response_logprobs` runs one forward over prompt and response and never holds the
vocabulary-sized logits whole: the model's output layer is stood in for by
`ResponseTokenHead`, which applies the layer's weight to the response tokens' hidden
states a chunk of tokens at a time (roles.algorithms.chunked_logprobs). `batch_logprobs`
takes a rollout batch's columns and leaves padding columns no row uses out of the forward.
`rollout_logprobs` is the no-gradient pass the reference's log-probs and the trainer's
recomputed old log-probs both come from, so the two agree exactly for the same weights
and micro-batches (a number of rows, or a budget of padded tokens: roles.micro_batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

import torch

from protocols.batch import Batch
from roles.algorithms.chunked_logprobs import chunked_token_logprobs
from roles.micro_batches import by_length, per_row, response_attention  # noqa: F401  by_length: re-exported for the trainer's micro-batch order
from roles.models import autocast_for, positions_from_mask
from runtime.cores import rebalance as rebalance_cores

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def response_logprobs(
    model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
    response_ids: torch.Tensor, response_mask: torch.Tensor,
    temperature: float = 1.0, with_entropy: bool = False, chunk_tokens: int | None = None,
    response_attention: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the response tokens under softmax(logits / temperature), in one
    differentiable forward over prompt and response.

    The vocabulary-sized logits are never held whole: during the forward the model's
    output layer is stood in for by `ResponseTokenHead`, which applies the layer's weight
    to the response tokens' hidden states `chunk_tokens` at a time
    (roles.algorithms.chunked_logprobs), in backward too. Because it runs inside the
    model's own forward, a sharded (FSDP) model has its output layer gathered as usual.
    Models whose forward changes the logits after the output layer (a final soft cap, a
    logit scale) take the model's logits instead, chunked only in the softmax.

    Args:
        prompt_ids, prompt_mask: [N, P], left-padded (as in `GenerationOutput`).
        response_ids, response_mask: [N, R], right-padded; log-probs are computed where
            ``response_mask`` > 0.
        chunk_tokens: response tokens per chunk (default: about 32 MiB of float32 logits).
        response_attention: [N, R], the response tokens the model reads (a multi-turn
            row's observations too: ``Column.RESPONSE_ATTENTION``); default ``response_mask``.

    Returns:
        log-probabilities [N, R] float32 and, ``with_entropy``, the entropy [N, R] of each
        position's softmax(logits / temperature); both 0 where ``response_mask`` is 0.
    """
    response_length = response_ids.shape[1]
    valid = response_mask > 0
    # only the positions that predict response tokens reach the output layer: the last
    # prompt token's up to the second-to-last response token's
    attended = response_mask if response_attention is None else response_attention
    inputs = {**sequence_inputs(prompt_ids, prompt_mask, response_ids, attended),
              "use_cache": False, "logits_to_keep": response_length + 1}
    if logits_are_output_layer(model):
        head = ResponseTokenHead(model.get_output_embeddings(), response_ids, valid, temperature, with_entropy, chunk_tokens)
        with output_layer_replaced(model, head):
            statistics = model(**inputs).logits  # [N, R, 2]: what the stand-in head returned
        logprobs, entropy = statistics[..., 0], statistics[..., 1]
        return logprobs, entropy if with_entropy else None
    logits = model(**inputs).logits[:, :-1]
    token = chunked_token_logprobs(logits[valid], None, response_ids[valid], temperature=temperature,
                                   with_entropy=with_entropy, chunk_tokens=chunk_tokens)
    return scatter_rows(token.logprobs, valid), scatter_rows(token.entropy, valid) if with_entropy else None


def sequence_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                    response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A causal LM's inputs for prompt and response in one sequence: ``input_ids``,
    ``attention_mask`` and ``position_ids``, each [N, P + R] (positions count real
    tokens only, so the prompt's left padding shifts nothing).

    Args:
        prompt_ids, prompt_mask: [N, P], left-padded.
        response_ids, response_mask: [N, R], right-padded (any dtype; > 0 is a token).
    """
    attention_mask = torch.cat([prompt_mask.long(), (response_mask > 0).long()], dim=1)
    return {"input_ids": torch.cat([prompt_ids, response_ids], dim=1), "attention_mask": attention_mask,
            "position_ids": positions_from_mask(attention_mask)}


@torch.no_grad()
def rollout_logprobs(model: PreTrainedModel, batch: Batch, temperature: float, micro_batch_size: int,
                     device: str, autocast: str | None = None, max_tokens_per_micro_batch: int | None = None,
                     ) -> torch.Tensor:
    """`batch_logprobs` of a rollout batch without gradients, `micro_batch_size` rows per
    forward on `device`, under torch.autocast in `autocast` (None: none). With
    `max_tokens_per_micro_batch` the rows are sorted by length and each forward takes as
    many as fit that many padded tokens instead (roles.micro_batches.per_row).

    Returns:
        [N, R] float32 on the CPU in `batch`'s row order, 0 where ``response_mask`` is 0.
    """
    def forward(micro: Batch) -> torch.Tensor:
        with autocast_for(device, autocast):
            logprobs, _ = batch_logprobs(model, micro.to(device), temperature)
        return logprobs.float().cpu()

    return per_row(forward, batch, micro_batch_size, max_tokens_per_micro_batch)


def batch_logprobs(model: PreTrainedModel, batch: Batch, temperature: float, with_entropy: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`response_logprobs` of a rollout batch's columns (``prompt_ids``, ``prompt_mask``,
    ``response_ids``, ``response_mask``), for the trainer, the reference and the evaluator.

    Padding columns that no row of `batch` uses (prompts are left-padded, responses
    right-padded, to the widest row of the whole rollout batch) stay out of the forward
    (`without_unused_padding`), so a micro-batch of short rows costs what its own longest
    row needs; the results are padded back with zeros to the batch's response width."""
    rebalance_cores()  # a forward (and the backward after it) is where a share is resized
    columns = without_unused_padding(batch)
    logprobs, entropy = response_logprobs(model, columns.prompt_ids, columns.prompt_mask, columns.response_ids,
                                          columns.response_mask, temperature, with_entropy,
                                          response_attention=columns.response_attention)
    width = batch.tensors["response_mask"].shape[1]
    return pad_columns(logprobs, width), pad_columns(entropy, width) if entropy is not None else None


class ForwardColumns(NamedTuple):
    """A rollout batch's columns for one forward, without the padding no row uses."""

    prompt_ids: torch.Tensor
    """[N, P'] left-padded."""
    prompt_mask: torch.Tensor
    """[N, P']."""
    response_ids: torch.Tensor
    """[N, R'] right-padded."""
    response_mask: torch.Tensor
    """[N, R'] the tokens trained on."""
    response_attention: torch.Tensor
    """[N, R'] the tokens read (`response_attention`)."""


def without_unused_padding(batch: Batch) -> ForwardColumns:
    """A rollout batch's columns without the padding columns no row uses: P' from the
    first column some prompt uses, R' up to the last column some response has a token
    in (observations included; at least 1)."""
    t = batch.tensors
    prompt_mask, attention = t["prompt_mask"], response_attention(t)
    first = int(used_columns(prompt_mask)[0]) if prompt_mask.any() else 0
    used = used_columns(attention)
    end = int(used[-1]) + 1 if len(used) else 1
    return ForwardColumns(t["prompt_ids"][:, first:], prompt_mask[:, first:], t["response_ids"][:, :end],
                          t["response_mask"][:, :end], attention[:, :end])


def used_columns(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the columns of a [N, T] mask where some row is valid, in order."""
    return (mask > 0).any(dim=0).nonzero().flatten()


def pad_columns(values: torch.Tensor, width: int) -> torch.Tensor:
    """[N, T] values padded on the right with zeros to [N, width] (differentiable)."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


LOGIT_POST_PROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields of transformers models whose forward changes the logits after the output layer."""


def logits_are_output_layer(model: torch.nn.Module) -> bool:
    """Whether the model's logits are exactly its output layer (a linear map) applied to
    the last hidden state, so `ResponseTokenHead` can stand in for it."""
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_POST_PROCESSING):
        return False
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    return isinstance(head, torch.nn.Linear) and hasattr(model, "set_output_embeddings")


def scatter_rows(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N, R] float32 with `values` [M] at the `valid` [N, R] positions, 0 elsewhere (differentiable)."""
    return torch.zeros(valid.shape, dtype=values.dtype, device=values.device).masked_scatter(valid, values)


class ResponseTokenHead(torch.nn.Module):
    """Stands in for a causal LM's output layer during one forward: from the hidden states
    of the kept positions [N, R + 1, H] it returns [N, R, 2], each response token's
    log-probability and entropy (0 at masked positions; entropy 0 unless asked for),
    computed from the real layer's weight in chunks of tokens."""

    def __init__(self, layer: torch.nn.Linear, response_ids: torch.Tensor, valid: torch.Tensor, temperature: float,
                 with_entropy: bool, chunk_tokens: int | None) -> None:
        super().__init__()
        self.layer = layer
        self.response_ids, self.valid = response_ids, valid
        self.temperature, self.with_entropy, self.chunk_tokens = temperature, with_entropy, chunk_tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        predicting = hidden[:, :-1][self.valid]  # [M, H]: the positions whose next token is a response token
        token = chunked_token_logprobs(
            predicting, self.layer.weight, self.response_ids[self.valid], bias=self.layer.bias,
            temperature=self.temperature, with_entropy=self.with_entropy, chunk_tokens=self.chunk_tokens,
        )
        entropy = token.entropy if token.entropy is not None else torch.zeros_like(token.logprobs)
        return torch.stack([scatter_rows(token.logprobs, self.valid), scatter_rows(entropy, self.valid)], dim=-1)


@contextmanager
def output_layer_replaced(model: PreTrainedModel, head: torch.nn.Module) -> Iterator[None]:
    """The model with `head` as its output layer, for the duration of the block."""
    layer = model.get_output_embeddings()
    model.set_output_embeddings(head)
    try:
        yield
    finally:
        model.set_output_embeddings(layer)
