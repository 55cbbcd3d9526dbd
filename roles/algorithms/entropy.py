"""Token log-probabilities and entropies from logits, computed without overflow or NaN.

Both functions work in log space (logsumexp / log_softmax subtract the row maximum
internally), so logits of any magnitude are fine, and both accept -inf logits
(tokens masked out of the vocabulary, e.g. by a grammar or top-k filter): such a
token has probability 0 and contributes 0 to the entropy, in the value and in the
gradient. A row must have at least one finite logit, otherwise it describes no
distribution.

Divide the logits by the sampling temperature before calling these, so the
log-probs match the distribution the generator sampled from.
"""

from __future__ import annotations

import torch

from roles.algorithms.masked import require_rank


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits) at every position.

        H = -sum_v p_v * log p_v,   log p = log_softmax(logits),   0 * log 0 := 0

    Args:
        logits: [B, T, V] (any leading shape works; the last dim is the vocabulary).

    Returns:
        [B, T] entropies in nats, in [0, log V].
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    # A -inf logit has log p = -inf and p = 0; replacing its log p by 0 keeps the
    # product 0 * (-inf) from turning into NaN in the value and in the gradient.
    finite_log_probs = torch.where(torch.isneginf(log_probs), torch.zeros_like(log_probs), log_probs)
    return -(log_probs.exp() * finite_log_probs).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each given token under softmax(logits).

        log p(token_ids[b, t]) = logits[b, t, token_ids[b, t]] - logsumexp_v logits[b, t, v]

    Only the [B, T] logsumexp is materialised besides the logits, not a full
    [B, T, V] log_softmax.

    Args:
        logits: [B, T, V].
        token_ids: [B, T] integer token ids in [0, V).

    Returns:
        [B, T] log-probabilities (<= 0), with the gradient flowing to the logits.
    """
    require_rank(logits, 3, "logits", "[B, T, V]")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"token_ids must have shape {tuple(logits.shape[:-1])} (the logits without the vocabulary dim), "
            f"got {tuple(token_ids.shape)}"
        )
    if token_ids.is_floating_point():
        raise ValueError(f"token_ids must be integers, got dtype {token_ids.dtype}; cast with .long()")
    chosen_logits = logits.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    return chosen_logits - torch.logsumexp(logits, dim=-1)
