"""Token log-probabilities and entropies straight from hidden states, a chunk of tokens
at a time, so the [tokens, vocabulary] logits never exist whole, forward or backward.

A policy-gradient step needs two numbers per response token: the log-probability of
the sampled token, and (for the bonus or the log) the entropy, both of
softmax(logits / temperature). Computing them from the model's logits holds the
[N, R, V] logits, their log_softmax and, under autograd, the tensors saved for
backward: with V = 49,152 and 32 x 32 response tokens that is 0.2 GB per fp32 copy,
several copies deep, and the lm-head matmul producing them is a large share of a small
model's step. Here the output layer is applied to `chunk_tokens` hidden states at a
time; each chunk's logits live only while its two numbers are taken, and the backward
pass recomputes them chunk by chunk (a custom autograd function: what it saves is
the hidden states, the weight and one float per token).

Per token t with hidden state h_t, logits z_t = W h_t (+ b), scaled s = z_t / tau:

    log p(y_t) = s[y_t] - logsumexp(s)                     (the sampled token y_t)
    H_t        = -sum_v p_v log p_v                       (entropy, nats)

and their gradients with respect to s (p = softmax(s), e_y the one-hot of y_t):

    d log p(y_t) / ds = e_y - p
    d H_t / ds        = -p * (log p + H_t)

The matmuls run in the autocast dtype when autocast is on (bfloat16 on CPU), the
softmax arithmetic always in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

DEFAULT_CHUNK_BYTES = 32 * 2**20
"""Float32 logits per chunk, in bytes: large enough for an efficient matmul, small
enough that a chunk's few [chunk, V] temporaries stay far below the whole tensor."""


class TokenLogProbs(NamedTuple):
    """Per-token statistics of softmax(logits / temperature)."""

    logprobs: torch.Tensor
    """[M] float32 log-probability of each given token."""
    entropy: torch.Tensor | None
    """[M] float32 entropy of each position's distribution, in nats; None unless asked for."""


def default_chunk_tokens(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk's float32 logits take about `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab_size))


def chunked_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor | None, token_ids: torch.Tensor, *,
    bias: torch.Tensor | None = None, temperature: float = 1.0, with_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> TokenLogProbs:
    """Log-probabilities (and entropies) of `token_ids` under
    softmax((hidden @ weight.T + bias) / temperature), `chunk_tokens` rows at a time.

    Equal to `logprobs_from_logits` / `entropy_from_logits` on the whole logits within
    float tolerance, gradients included; differentiable in `hidden`, `weight` and `bias`.
    With ``weight=None`` the rows of `hidden` are the logits themselves ([M, V], for a
    model whose logits come from elsewhere): only the softmax is chunked then.

    Args:
        hidden: [M, H] hidden states, one row per token (the positions that predict them).
        weight: [V, H] the output layer's weight, or None (hidden holds the logits).
        token_ids: [M] integer ids in [0, V).
        bias: [V] the output layer's bias, if it has one.
        temperature: divides the logits (> 0).
        with_entropy: also return the entropies.
        chunk_tokens: rows per chunk; default `default_chunk_tokens(V)`.

    Returns:
        `TokenLogProbs`: [M] float32 log-probabilities and, `with_entropy`, [M] entropies.
    """
    if hidden.ndim != 2 or (weight is not None and (weight.ndim != 2 or hidden.shape[1] != weight.shape[1])):
        shapes = f"{tuple(hidden.shape)} and {tuple(weight.shape) if weight is not None else None}"
        raise ValueError(f"hidden must be [M, H] and weight [V, H] (or None), got {shapes}")
    vocab_size = weight.shape[0] if weight is not None else hidden.shape[1]
    if token_ids.shape != hidden.shape[:1] or token_ids.is_floating_point():
        raise ValueError(f"token_ids must be [M] = [{hidden.shape[0]}] integers, got {tuple(token_ids.shape)} {token_ids.dtype}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = chunk_tokens if chunk_tokens is not None else default_chunk_tokens(vocab_size)
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk}")
    device_type = hidden.device.type
    if weight is None:
        compute_dtype = hidden.dtype
    elif torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    logprobs, entropy = _ChunkedTokenLogProbs.apply(hidden, weight, bias, token_ids.long(), float(temperature),
                                                     with_entropy, chunk, compute_dtype)
    return TokenLogProbs(logprobs, entropy if with_entropy else None)


def _scaled_logits(hidden: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   temperature: float) -> torch.Tensor:
    """[c, V] float32 logits / temperature of one chunk (hidden and weight already in the compute dtype)."""
    logits = hidden @ weight.T if weight is not None else hidden
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits.float() / temperature


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """The autograd function behind `chunked_token_logprobs`: saves the inputs and the
    per-token logsumexp (and entropy), recomputes each chunk's logits in backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, token_ids: torch.Tensor,
                temperature: float, with_entropy: bool, chunk: int, compute_dtype: torch.dtype,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        logprobs = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        log_normalizers = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(rows if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            cast_weight = weight.to(compute_dtype) if weight is not None else None
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                scaled = _scaled_logits(hidden[start:end].to(compute_dtype), cast_weight, bias, temperature)
                normalizer = torch.logsumexp(scaled, dim=-1)
                log_normalizers[start:end] = normalizer
                logprobs[start:end] = scaled.gather(-1, token_ids[start:end, None]).squeeze(-1) - normalizer
                if with_entropy:  # in place: a chunk holds two [c, V] temporaries at most
                    log_probs = scaled.sub_(normalizer[:, None])
                    entropy[start:end] = -(torch.exp(log_probs).mul_(log_probs)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, token_ids, log_normalizers, entropy)
        ctx.settings = (temperature, with_entropy, chunk, compute_dtype)
        ctx.mark_non_differentiable(log_normalizers)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None,
                 ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, token_ids, log_normalizers, entropy = ctx.saved_tensors
        temperature, with_entropy, chunk, compute_dtype = ctx.settings
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight and weight is not None else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_bias else None
        if not with_entropy:
            grad_entropy = None
        with torch.autocast(hidden.device.type, enabled=False):
            cast_weight = weight.to(compute_dtype) if weight is not None else None
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                cast_hidden = hidden[start:end].to(compute_dtype)
                # in place where it can be: a chunk holds three [c, V] temporaries at most
                log_probs = _scaled_logits(cast_hidden, cast_weight, bias, temperature).sub_(log_normalizers[start:end, None])
                probs = torch.exp(log_probs)
                grad_scaled = torch.zeros_like(probs)
                if grad_logprobs is not None:
                    selected = grad_logprobs[start:end, None]
                    grad_scaled.addcmul_(probs, selected, value=-1.0)
                    grad_scaled.scatter_add_(-1, token_ids[start:end, None], selected)
                if grad_entropy is not None:
                    entropy_term = log_probs.add_(entropy[start:end, None]).mul_(probs)
                    grad_scaled.addcmul_(entropy_term, grad_entropy[start:end, None], value=-1.0)
                del log_probs, probs
                grad_logits = grad_scaled.div_(temperature).to(compute_dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad_logits @ cast_weight if cast_weight is not None else grad_logits).to(hidden.dtype)
                if grad_weight is not None and compute_dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.T, cast_hidden)  # no [V, H] temporary
                elif grad_weight is not None:
                    grad_weight += (grad_logits.T @ cast_hidden).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        return (grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None,  # type: ignore[union-attr]
                grad_bias.to(bias.dtype) if grad_bias is not None else None, None, None, None, None, None)
