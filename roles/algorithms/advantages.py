"""Advantage estimators: GAE, GRPO / Dr.GRPO, RLOO, REINFORCE++ (with and without a group baseline).

Shapes: B sequences, T response tokens. Token-level tensors are [B, T] and come with a
`response_mask` [B, T] (1 = a token the policy generated, 0 = padding or a
multi-turn observation token inside the response). Per-sequence scores are [B].

Conventions shared by every estimator here:
- outputs are 0 at mask-0 positions;
- results carry no gradient (advantages are constants for the policy loss);
- recursions over time skip mask-0 positions: the running quantities pass through
  them unchanged, so a token is connected to the next *policy* token, not to the
  observation tokens in between.

Where troupe's default differs from verl's convention (the std of whitening, a group
of one response), a parameter offers verl's; docs/algorithms.md says which default
follows which convention and why.

`advantage_registry` maps the names a topology uses to these functions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from roles.algorithms.groups import ONE_SAMPLE_GROUP_CHOICES, GroupIds, GroupStats, OneSampleGroup, group_stats
from roles.algorithms.masked import as_float_mask, masked_whiten, require_rank, require_same_shape

#: Added to the group standard deviation in GRPO so a group of equal scores maps to 0.
GRPO_STD_EPS = 1e-6


class AdvantageOutput(NamedTuple):
    """Advantages and the returns they were computed from.

    Attributes:
        advantages: [B, T] policy-gradient weights, 0 at mask-0 positions.
        returns: [B, T] value targets (what a critic would regress on), 0 at
            mask-0 positions.
    """

    advantages: torch.Tensor
    returns: torch.Tensor


def _check_token_level(response_mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    require_rank(response_mask, 2, "response_mask", "[B, T]")
    require_same_shape(response_mask=response_mask, **tensors)


def _check_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> None:
    require_rank(scores, 1, "scores", "[B]")
    require_rank(response_mask, 2, "response_mask", "[B, T]")
    if scores.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"scores has {scores.shape[0]} rows but response_mask has {response_mask.shape[0]}; "
            "pass one score per response"
        )


def _lone_rows(stats: GroupStats, one_sample_group: OneSampleGroup) -> torch.Tensor:
    """[B] bool, True for a row alone in its group; checks the one_sample_group choice first."""
    if one_sample_group not in ONE_SAMPLE_GROUP_CHOICES:
        known = ", ".join(repr(choice) for choice in ONE_SAMPLE_GROUP_CHOICES)
        raise ValueError(f"one_sample_group must be one of {known}, got {one_sample_group!r}")
    return stats.size < 2


def _zero_lone_rows(advantage: torch.Tensor, is_lone: torch.Tensor, one_sample_group: OneSampleGroup) -> torch.Tensor:
    """[B] advantages with lone rows set to 0 under "zero"; unchanged under "score"."""
    if one_sample_group == "zero":
        return torch.where(is_lone, torch.zeros_like(advantage), advantage)
    return advantage


def broadcast_to_tokens(per_sequence: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Copies a per-sequence value onto every valid token of its sequence.

    Args:
        per_sequence: [B].
        response_mask: [B, T] 0/1 (float or bool).

    Returns:
        [B, T] with out[b, t] = per_sequence[b] * response_mask[b, t].
    """
    return per_sequence.unsqueeze(-1) * as_float_mask(response_mask, per_sequence)


@torch.no_grad()
def compute_gae(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten: bool = False,
    unbiased_std: bool = False,
) -> AdvantageOutput:
    """Generalised advantage estimation (Schulman et al., 2016) over policy tokens.

    Backwards over t, with V = 0 after the last valid token:
        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * lam * A_next
    where V_next and A_next are taken at the next position with mask 1; at mask-0
    positions both pass through unchanged (their rewards and values are ignored).
    returns_t = (A_t + V_t) * m_t, computed before any whitening. With
    `whiten=True` the advantages are then whitened over all mask-1 tokens of the
    batch (mean 0, std 1; population std unless `unbiased_std`).

    Args:
        token_level_rewards: [B, T] reward per token (e.g. the score on the last
            valid token minus per-token KL penalties).
        values: [B, T] critic values V(s_t) for each response token.
        response_mask: [B, T] 0/1 (float or bool).
        gamma: discount factor in [0, 1].
        lam: GAE lambda in [0, 1]; 1 gives Monte-Carlo returns minus V, 0 gives
            one-step TD errors.
        whiten: whiten the advantages over mask-1 tokens.
        unbiased_std: with `whiten`, Bessel-corrected std (N - 1, verl) instead of
            the population std (N).

    Returns:
        AdvantageOutput(advantages [B, T], returns [B, T]).
    """
    _check_token_level(response_mask, token_level_rewards=token_level_rewards, values=values)
    is_valid = response_mask.to(device=values.device, dtype=torch.bool)
    batch_size, length = values.shape
    next_value = values.new_zeros(batch_size)
    next_advantage = values.new_zeros(batch_size)
    advantages = torch.zeros_like(values)
    for t in reversed(range(length)):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        advantage_t = delta + gamma * lam * next_advantage
        # torch.where rather than blending with the mask: values at observation or
        # padding positions may be garbage (even inf), and 0 * inf would be NaN.
        next_advantage = torch.where(is_valid[:, t], advantage_t, next_advantage)
        next_value = torch.where(is_valid[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(is_valid[:, t], advantage_t, torch.zeros_like(advantage_t))
    returns = torch.where(is_valid, advantages + values, torch.zeros_like(values))
    if whiten:
        advantages = masked_whiten(advantages, is_valid, unbiased_std=unbiased_std)
    return AdvantageOutput(advantages=advantages, returns=returns)


@torch.no_grad()
def compute_grpo_advantages(
    scores: torch.Tensor,
    group_ids: GroupIds,
    response_mask: torch.Tensor,
    normalize_by_std: bool = True,
    unbiased_std: bool = True,
    eps: float = GRPO_STD_EPS,
    one_sample_group: OneSampleGroup = "zero",
) -> torch.Tensor:
    """Group-relative advantages of GRPO (Shao et al., 2024) and Dr.GRPO (Liu et al., 2025).

    For response i in group g (the responses to one prompt):
        A_i = (r_i - mean_g) / (std_g + eps)   if normalize_by_std (GRPO)
        A_i =  r_i - mean_g                    otherwise (Dr.GRPO)
    then A_i is copied onto every valid token of response i. std_g is unbiased
    (divide by n_g - 1, as torch.std) unless `unbiased_std=False`. A group of size
    1 has no peer to compare with: it gets advantage 0 with one_sample_group="zero",
    or mean_g = 0 and std_g = 1 with "score" (verl), so A_i = r_i / (1 + eps)
    (GRPO) or r_i (Dr.GRPO).

    Args:
        scores: [B] scalar score per response.
        group_ids: [B] integer tensor or sequence of B hashable ids; groups may be of
            any size and need not be contiguous.
        response_mask: [B, T] 0/1 (float or bool).
        normalize_by_std: divide by the group std (GRPO); False gives Dr.GRPO.
        unbiased_std: Bessel-corrected group std (default, as torch.std) or the
            population std.
        eps: added to the group std before dividing.
        one_sample_group: "zero" or "score", the advantage of a response alone in
            its group (see above).

    Returns:
        [B, T] advantages, 0 at mask-0 positions.
    """
    _check_scores(scores, response_mask)
    stats = group_stats(scores, group_ids, unbiased_std=unbiased_std)
    is_lone = _lone_rows(stats, one_sample_group)
    mean, std = stats.mean, stats.std
    if one_sample_group == "score":
        mean = torch.where(is_lone, torch.zeros_like(mean), mean)
        std = torch.where(is_lone, torch.ones_like(std), std)
    centred = scores - mean
    advantage = centred / (std + eps) if normalize_by_std else centred
    return broadcast_to_tokens(_zero_lone_rows(advantage, is_lone, one_sample_group), response_mask)


@torch.no_grad()
def compute_rloo_advantages(
    scores: torch.Tensor, group_ids: GroupIds, response_mask: torch.Tensor, one_sample_group: OneSampleGroup = "zero"
) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al., 2019; Ahmadian et al., 2024).

    For response i in group g of size n_g >= 2:
        A_i = r_i - (1 / (n_g - 1)) * sum_{j in g, j != i} r_j
            = n_g / (n_g - 1) * (r_i - mean_g)
    A group of size 1 has no other member to form a baseline: it gets 0 with
    one_sample_group="zero", or a baseline of 0 (A_i = r_i) with "score" (verl's
    `rloo` estimator). A_i is copied onto every valid token of response i.

    Args:
        scores: [B] scalar score per response.
        group_ids: [B] integer tensor or sequence of B hashable ids.
        response_mask: [B, T] 0/1 (float or bool).
        one_sample_group: "zero" or "score", the advantage of a response alone in
            its group (see above).

    Returns:
        [B, T] advantages, 0 at mask-0 positions.
    """
    _check_scores(scores, response_mask)
    stats = group_stats(scores, group_ids)
    is_lone = _lone_rows(stats, one_sample_group)
    # A lone response's leave-one-out sum is empty: (total - r_i) / 1 = 0, the "score" baseline.
    leave_one_out_mean = (stats.total - scores) / (stats.size - 1.0).clamp(min=1.0)
    advantage = _zero_lone_rows(scores - leave_one_out_mean, is_lone, one_sample_group)
    return broadcast_to_tokens(advantage, response_mask)


@torch.no_grad()
def compute_discounted_returns(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Discounted reward-to-go over policy tokens.

    Backwards over t with G = 0 after the last valid token:
        G_t = r_t + gamma * G_next
    where G_next is taken at the next mask-1 position (mask-0 positions pass the
    running return through and their rewards are ignored, so discounting counts
    policy tokens only).

    Args:
        token_level_rewards: [B, T].
        response_mask: [B, T] 0/1 (float or bool).
        gamma: discount factor in [0, 1].

    Returns:
        [B, T] returns, 0 at mask-0 positions.
    """
    _check_token_level(response_mask, token_level_rewards=token_level_rewards)
    is_valid = response_mask.to(device=token_level_rewards.device, dtype=torch.bool)
    running = token_level_rewards.new_zeros(token_level_rewards.shape[0])
    returns = torch.zeros_like(token_level_rewards)
    for t in reversed(range(token_level_rewards.shape[1])):
        candidate = token_level_rewards[:, t] + gamma * running
        running = torch.where(is_valid[:, t], candidate, running)
        returns[:, t] = torch.where(is_valid[:, t], candidate, torch.zeros_like(candidate))
    return returns


@torch.no_grad()
def compute_reinforce_plus_plus_advantages(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0, unbiased_std: bool = False
) -> AdvantageOutput:
    """REINFORCE++ (Hu, 2025): whitened token-level discounted returns.

        G_t = r_t + gamma * G_next                      (see compute_discounted_returns)
        A_t = (G_t - mean(G)) / (std(G) + 1e-8) * m_t
    where mean and std run over all mask-1 tokens of the batch (population std, or
    Bessel-corrected with `unbiased_std` as verl). The per-sequence score usually
    sits on the last valid token and per-token KL penalties (KL used as a reward)
    are already subtracted from r_t.

    Args:
        token_level_rewards: [B, T].
        response_mask: [B, T] 0/1 (float or bool).
        gamma: discount factor in [0, 1].
        unbiased_std: whiten with the N - 1 std instead of the N one.

    Returns:
        AdvantageOutput(advantages [B, T] whitened, returns [B, T] = G before whitening).
    """
    returns = compute_discounted_returns(token_level_rewards, response_mask, gamma)
    advantages = masked_whiten(returns, response_mask, unbiased_std=unbiased_std)
    return AdvantageOutput(advantages=advantages, returns=returns)


@torch.no_grad()
def compute_reinforce_plus_plus_baseline_advantages(
    scores: torch.Tensor,
    group_ids: GroupIds,
    response_mask: torch.Tensor,
    unbiased_std: bool = False,
    one_sample_group: OneSampleGroup = "zero",
) -> torch.Tensor:
    """REINFORCE++ with a group-mean baseline, then batch whitening.

    Three steps, in this order:
        1. c_i = r_i - mean_g            (group mean of the scalar scores; a group of
                                          size 1 gives c_i = 0, or c_i = r_i with
                                          one_sample_group="score" as verl)
        2. a_{i,t} = c_i * m_{i,t}       (broadcast onto the valid tokens)
        3. A = (a - mean(a)) / (std(a) + 1e-8) * m
    with mean and std of step 3 taken over all mask-1 tokens of the batch, so a long
    response weighs more in them than a short one (population std, or
    Bessel-corrected with `unbiased_std` as verl). No discount is applied (the score
    is an outcome reward, gamma = 1).

    Args:
        scores: [B] scalar score per response.
        group_ids: [B] integer tensor or sequence of B hashable ids.
        response_mask: [B, T] 0/1 (float or bool).
        unbiased_std: whiten with the N - 1 std instead of the N one.
        one_sample_group: "zero" or "score", c_i of a response alone in its group.

    Returns:
        [B, T] advantages, 0 at mask-0 positions.
    """
    centred = compute_grpo_advantages(
        scores, group_ids, response_mask, normalize_by_std=False, one_sample_group=one_sample_group
    )
    return masked_whiten(centred, response_mask, unbiased_std=unbiased_std)
