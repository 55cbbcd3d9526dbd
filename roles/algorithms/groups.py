"""Per-group statistics of per-sequence scores, for group-relative estimators.

GRPO, RLOO and REINFORCE++-baseline sample several responses per prompt and compare
each response with the others of its prompt. The group of a response is given by a
group id per row: an integer tensor, or a list of any hashable ids (for example
prompt uids). Groups may have any size and their rows need not be contiguous, so the
statistics are computed with scatter-adds over a dense group index rather than by
reshaping to [num_groups, group_size].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Literal, NamedTuple, Union, get_args

import torch

#: A group id per row: an integer tensor [B] or a sequence of B hashable ids.
GroupIds = Union[torch.Tensor, Sequence[Hashable]]

#: The advantage of a response alone in its group (a prompt sampled once, or the
#: last sample of a prompt left in a batch): "zero" (no peer to compare with, so no
#: gradient) or "score" (verl's: the group's mean is taken as 0 and its std as 1, so
#: the response is judged by its raw score).
OneSampleGroup = Literal["zero", "score"]
#: The values `OneSampleGroup` takes.
ONE_SAMPLE_GROUP_CHOICES: tuple[str, ...] = get_args(OneSampleGroup)


class GroupStats(NamedTuple):
    """Statistics of the group each row belongs to, broadcast back to rows.

    Attributes:
        mean: [B] mean score of the row's group.
        std: [B] standard deviation of the row's group (biased or unbiased as
            requested); 0 for groups of size 1.
        size: [B] number of rows in the row's group, as a float.
        total: [B] sum of the scores of the row's group.
    """

    mean: torch.Tensor
    std: torch.Tensor
    size: torch.Tensor
    total: torch.Tensor


def dense_group_index(group_ids: GroupIds, batch_size: int, device: torch.device) -> torch.Tensor:
    """Maps arbitrary group ids to a dense index 0..G-1 per row.

    Args:
        group_ids: integer tensor [B] or a sequence of B hashable ids.
        batch_size: B, the number of scores the ids belong to.
        device: where the returned index lives.

    Returns:
        int64 tensor [B]; rows with equal ids get equal indices.
    """
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1 or group_ids.shape[0] != batch_size:
            raise ValueError(
                f"group_ids must have shape [B]=[{batch_size}], got {tuple(group_ids.shape)}; pass one id per sequence"
            )
        if group_ids.is_floating_point() or group_ids.is_complex():
            raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}; cast with .long()")
        _, index = torch.unique(group_ids, return_inverse=True)
        return index.to(device=device, dtype=torch.int64)
    if len(group_ids) != batch_size:
        raise ValueError(
            f"group_ids has {len(group_ids)} entries but there are {batch_size} scores; pass one id per sequence"
        )
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(group_id, len(dense)) for group_id in group_ids]
    return torch.tensor(index, dtype=torch.int64, device=device)


def group_stats(scores: torch.Tensor, group_ids: GroupIds, unbiased_std: bool = True) -> GroupStats:
    """Computes each row's group mean, standard deviation, size and sum.

    For a group g with n_g members and scores r_j:
        mean_g = (1 / n_g) * sum_j r_j
        std_g  = sqrt(sum_j (r_j - mean_g)^2 / (n_g - 1))   if unbiased_std (as torch.std)
        std_g  = sqrt(sum_j (r_j - mean_g)^2 / n_g)         otherwise
    A group of size 1 has std 0 under both choices.

    Args:
        scores: [B] per-sequence scores.
        group_ids: integer tensor [B] or a sequence of B hashable ids.
        unbiased_std: use Bessel's correction (n_g - 1) in the standard deviation.

    Returns:
        GroupStats with [B] tensors, one value per row.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [B], got {tuple(scores.shape)}; sum token-level rewards over T first")
    index = dense_group_index(group_ids, scores.shape[0], scores.device)
    num_groups = int(index.max().item()) + 1 if index.numel() > 0 else 0
    zeros = scores.new_zeros(num_groups)
    total = zeros.index_add(0, index, scores)
    size = zeros.index_add(0, index, torch.ones_like(scores))
    mean = total / size
    squared_deviation = zeros.index_add(0, index, (scores - mean[index]) ** 2)
    divisor = (size - 1.0).clamp(min=1.0) if unbiased_std else size
    std = torch.where(size > 1, (squared_deviation / divisor).sqrt(), torch.zeros_like(size))
    return GroupStats(mean=mean[index], std=std[index], size=size[index], total=total[index])


def zero_variance_share(scores: torch.Tensor, group_ids: GroupIds) -> float:
    """The share of groups (of two or more samples) whose samples all scored the same.

    Such a group gives a group-relative estimator (GRPO, RLOO) no advantage and so no
    gradient. Groups of one sample are not counted; 0.0 when no group has two.

    Args:
        scores: [B] per-sequence scores.
        group_ids: integer tensor [B] or a sequence of B hashable ids.
    """
    spread = _group_spread(scores, group_ids)
    if spread is None:
        return 0.0
    counted = spread.size > 1
    return float(((spread.highest == spread.lowest) & counted).sum() / counted.sum()) if counted.any() else 0.0


def informative_rows(scores: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """[B] bool: the rows whose group carries a learning signal, i.e. has two or more
    samples that did not all score the same (the group's reward std is above 0).

    DAPO's dynamic sampling (roles.dynamic_sampling) keeps only these. A group of one
    sample is not informative: it has no peer to be compared with (its advantage is 0
    under ``one_sample_group: zero``, the default).

    Args:
        scores: [B] per-sequence scores.
        group_ids: integer tensor [B] or a sequence of B hashable ids.
    """
    spread = _group_spread(scores, group_ids)
    if spread is None:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    return ((spread.size > 1) & (spread.highest > spread.lowest))[spread.index]


class _GroupSpread(NamedTuple):
    index: torch.Tensor
    """[B] each row's dense group index."""
    size: torch.Tensor
    """[G] samples per group."""
    highest: torch.Tensor
    """[G] the group's highest score."""
    lowest: torch.Tensor
    """[G] the group's lowest score."""


def _group_spread(scores: torch.Tensor, group_ids: GroupIds) -> _GroupSpread | None:
    """Each group's size and score range; None for an empty batch."""
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [B], got {tuple(scores.shape)}")
    index = dense_group_index(group_ids, scores.shape[0], scores.device)
    if index.numel() == 0:
        return None
    groups = int(index.max()) + 1
    size = scores.new_zeros(groups).index_add(0, index, torch.ones_like(scores))
    highest = scores.new_full((groups,), -math.inf).scatter_reduce(0, index, scores, "amax")
    lowest = scores.new_full((groups,), math.inf).scatter_reduce(0, index, scores, "amin")
    return _GroupSpread(index, size, highest, lowest)
