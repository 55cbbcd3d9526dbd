"""How a batch's rows are cut into micro-batches, one forward (and backward) each: a
fixed number of rows, or as many rows as fit a budget of padded tokens.

A forward over a rollout batch's rows costs its padded size: rows x (widest prompt +
longest response) tokens, because `roles.logprobs.batch_logprobs` (and the critic's value
model) leave out the padding columns no row of the micro-batch uses, and what is left
is a rectangle. Responses of one batch differ in length by 10x; with a fixed number of
rows per micro-batch most of that rectangle is padding. Under a token budget the rows
are ordered by length (`by_length`) and each micro-batch takes rows until one more would
make its rectangle exceed ``max_tokens``: micro-batches of short rows hold many of them,
micro-batches of long rows few, and the padding left is the length spread between
neighbours. A row longer than the budget on its own is a micro-batch of one.

The grouping changes the work, never the result: gradient accumulation weighs each
micro-batch by its share of the mini-batch (roles.update, roles.algorithms.micro_batch_weight),
and the no-gradient passes put every row's result back in its place (`per_row`).

Packing several sequences into one row (position ids restarting per sequence) is not
done here; docs/algorithms.md says where it would be available and why it is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from protocols.batch import Batch
from protocols.rl import Column


def response_attention(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[N, R]: the response tokens a forward reads: ``Column.RESPONSE_ATTENTION`` in a
    multi-turn batch (observations included), else ``response_mask``."""
    return tensors.get(Column.RESPONSE_ATTENTION, tensors[Column.RESPONSE_MASK])


def by_length(batch: Batch) -> torch.Tensor:
    """Row order of `batch` from its shortest row (prompt and response tokens) to its
    longest: consecutive micro-batches then hold rows of similar length, and the forward
    of each leaves more padding out. A batch without ``prompt_mask`` is ordered by its
    responses."""
    t = batch.tensors
    lengths = (response_attention(t) > 0).sum(dim=1)
    if "prompt_mask" in t:
        lengths = lengths + (t["prompt_mask"] > 0).sum(dim=1)
    return torch.argsort(lengths, stable=True)


def row_extents(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the columns a forward over it alone needs: the prompt's, from its first
    token to the (left-padded) prompt's end, and the response's, up to its last token.

    Returns:
        prompt_columns [N], response_columns [N] (long; 0 for a row without tokens there).
    """
    t = batch.tensors
    response = response_attention(t) > 0
    columns = torch.arange(1, response.shape[1] + 1, device=response.device)
    response_columns = (response * columns).amax(dim=1) if response.shape[1] else torch.zeros(batch.size, dtype=torch.long)
    if "prompt_mask" not in t or t["prompt_mask"].shape[1] == 0:
        return torch.zeros_like(response_columns), response_columns
    prompt = t["prompt_mask"] > 0
    width = prompt.shape[1]
    from_end = torch.arange(width, 0, -1, device=prompt.device)  # column c lies width - c columns from the end
    return (prompt * from_end).amax(dim=1), response_columns


def padded_tokens(batch: Batch) -> int:
    """Tokens of one forward over `batch`'s rows with the unused padding left out:
    rows x (widest prompt + longest response, at least one response column)."""
    if batch.size == 0:
        return 0
    prompt, response = row_extents(batch)
    return batch.size * (int(prompt.max()) + max(1, int(response.max())))


def token_budget_split(batch: Batch, max_tokens: int) -> list[Batch]:
    """Consecutive pieces of `batch` (order the rows by length first: `by_length`), each
    as many rows as keep ``padded_tokens(piece) <= max_tokens``; a row that alone exceeds
    the budget is a piece of its own.

    Args:
        batch: rows with ``response_mask`` [N, R] and, optionally, ``prompt_mask`` [N, P].
        max_tokens: the budget of padded tokens per piece (>= 1).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}; set max_tokens_per_micro_batch to a positive count")
    prompt, response = (extent.tolist() for extent in row_extents(batch))
    pieces: list[Batch] = []
    start, widest_prompt, longest_response = 0, 0, 1
    for row in range(batch.size):
        wider_prompt, longer_response = max(widest_prompt, prompt[row]), max(longest_response, response[row])
        if row > start and (row - start + 1) * (wider_prompt + longer_response) > max_tokens:
            pieces.append(batch.select(slice(start, row)))
            start, wider_prompt, longer_response = row, prompt[row], max(1, response[row])
        widest_prompt, longest_response = wider_prompt, longer_response
    if batch.size > start:
        pieces.append(batch.select(slice(start, batch.size)))
    return pieces


def micro_batches(batch: Batch, micro_batch_size: int, max_tokens: int | None = None) -> list[Batch]:
    """`batch` cut in order into micro-batches: of ``micro_batch_size`` rows (the last may
    be smaller), or, with `max_tokens`, by `token_budget_split`."""
    if max_tokens is None:
        return batch.split_by_size(micro_batch_size)
    return token_budget_split(batch, max_tokens)


def per_row(compute: Callable[[Batch], torch.Tensor], batch: Batch, micro_batch_size: int,
            max_tokens: int | None = None) -> torch.Tensor:
    """`compute` of each micro-batch of `batch`, concatenated in `batch`'s row order.

    Without a budget the micro-batches are ``micro_batch_size`` rows in the batch's order;
    with `max_tokens` the rows are ordered `by_length` first, cut by `token_budget_split`,
    and the results put back where their rows came from.

    Args:
        compute: one micro-batch's rows -> results [n, ...], one per row.

    Returns:
        [N, ...]: row i holds the result of `batch`'s row i.
    """
    if max_tokens is None:
        return torch.cat([compute(micro) for micro in batch.split_by_size(micro_batch_size)])
    order = by_length(batch)
    sorted_results = torch.cat([compute(micro) for micro in token_budget_split(batch.select(order), max_tokens)])
    return sorted_results[torch.argsort(order).to(sorted_results.device)]
