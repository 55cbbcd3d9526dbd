"""Masked reductions and argument checks shared by the algorithm modules.

Every tensor in this package that covers response tokens comes with a
`response_mask` of the same shape: 1 where the token was produced by the policy
(it is trained on), 0 for padding and for observation tokens that a tool or
environment inserted inside a multi-turn response. The helpers here reduce only over
mask-1 positions and never divide by zero: a reduction over no valid token is 0,
because an empty batch slice carries no signal and a NaN would poison every
parameter it reaches.
"""

from __future__ import annotations

import torch

#: Added to the standard deviation before dividing by it when whitening.
WHITEN_EPS = 1e-8


def require_same_shape(**tensors: torch.Tensor) -> None:
    """Raises ValueError unless every tensor passed by keyword has the same shape.

    The message names each argument with its shape so the caller can see which
    one is off.
    """
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"expected tensors of one shape, got {listed}; align them (same [B, T]) before calling")


def require_rank(tensor: torch.Tensor, rank: int, name: str, layout: str) -> None:
    """Raises ValueError unless `tensor` has `rank` dimensions.

    Args:
        tensor: the tensor to check.
        rank: the expected number of dimensions.
        name: the argument name, for the message.
        layout: the expected layout in words, e.g. "[B, T]".
    """
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}")


def as_float_mask(response_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Returns a 0/1 float mask with the dtype and device of `like`.

    Args:
        response_mask: bool or numeric 0/1 mask.
        like: the tensor whose dtype and device the mask should take.
    """
    return response_mask.to(dtype=like.dtype, device=like.device)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` over mask-1 positions.

    Args:
        values: any shape.
        mask: 0/1 (float or bool), same shape as `values`.
        dim: dimension to reduce; None reduces over all elements.
    """
    # torch.where, not a product with the mask: a NaN or inf at a padding position
    # (e.g. a -inf log-prob minus a -inf log-prob) must not leak into the sum.
    is_valid = as_float_mask(mask, values) > 0
    selected = torch.where(is_valid, values, torch.zeros_like(values))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over mask-1 positions; 0 where no position is valid.

    mean = sum_{i : m_i = 1} x_i / max(N, 1), N the number of mask-1 positions; values
    at mask-0 positions are never read, so NaN or inf there cannot leak in.

    Args:
        values: any shape.
        mask: 0/1 (float or bool), same shape as `values`.
        dim: dimension to reduce; None reduces over all elements.
    """
    float_mask = as_float_mask(mask, values)
    count = float_mask.sum() if dim is None else float_mask.sum(dim=dim)
    return masked_sum(values, float_mask, dim) / count.clamp(min=1.0)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, eps: float = WHITEN_EPS, unbiased_std: bool = False
) -> torch.Tensor:
    """Whitens `values` over mask-1 positions; mask-0 positions become 0.

    whitened = (x - mu) / (sigma + eps) at mask-1 positions and 0 elsewhere, where mu
    and sigma are the mean and the standard deviation of x over the N mask-1
    positions of the whole tensor:
        sigma^2 = sum (x - mu)^2 / N         population std (default)
        sigma^2 = sum (x - mu)^2 / (N - 1)   if unbiased_std (Bessel's correction, verl)
    With N = 1 both give sigma = 0 (the one value maps to 0); with N = 0 the result
    is all zeros.

    Args:
        values: any shape, e.g. advantages [B, T].
        mask: 0/1 (float or bool), same shape as `values`.
        eps: added to sigma so a constant input maps to 0 instead of NaN.
        unbiased_std: divide the variance by N - 1 instead of N.
    """
    float_mask = as_float_mask(mask, values)
    mean = masked_mean(values, float_mask)
    squared_deviation = masked_sum((values - mean) ** 2, float_mask)
    count = float_mask.sum()
    divisor = (count - 1.0) if unbiased_std else count
    variance = squared_deviation / divisor.clamp(min=1.0)
    whitened = (values - mean) / (variance.sqrt() + eps)
    return torch.where(float_mask > 0, whitened, torch.zeros_like(whitened))
