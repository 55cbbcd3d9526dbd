"""Choosing an advantage estimator by name, with its parameters, from a topology.

The estimators in `advantages` have the signatures their papers suggest (GAE needs
values, GRPO needs group ids, ...). The controller instead holds one batch and one
config, so every estimator is wrapped here behind one call shape:

    estimator(inputs: AdvantageInputs, **parameters) -> AdvantageOutput

and `compute_advantages(config, inputs)` runs the one a config names.

Two kinds of estimator, by what they read (`reads_token_rewards`):

* outcome estimators (``grpo``, ``drgrpo``, ``rloo``, ``reinforce_plus_plus_baseline``)
  compare whole responses: they read one reward per sequence, r_i [B], and report as
  returns r_i copied onto the valid tokens;
* token-level estimators (``gae``, ``reinforce_plus_plus``) run a recursion over the
  tokens: they read a reward per token, r_{i,t} [B, T] (the outcome score on the last
  valid token, minus any per-token KL penalty).

`AdvantageInputs` carries the rewards in either form and each estimator takes the one
it reads, converting only if it was given the other (`sequence_rewards`,
`token_rewards`); the step (`roles.algorithms.step`) gives each kind its own form, so
a score goes [B] -> estimator, never [B] -> [B, T] -> [B].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from roles.algorithms import advantages as estimators
from roles.algorithms.advantages import AdvantageOutput, broadcast_to_tokens
from roles.algorithms.groups import GroupIds, OneSampleGroup
from roles.algorithms.kl import place_scores_on_last_token
from roles.algorithms.masked import masked_sum


@dataclass(frozen=True, kw_only=True)
class AdvantageInputs:
    """Everything an estimator may read from one rollout batch.

    Give the rewards in one form: `scores` [B] or `token_level_rewards` [B, T]; each
    estimator reads its own form and converts the other only when that is what it got.

    Attributes:
        response_mask: [B, T] 0/1 (float or bool).
        scores: [B] reward per response (the outcome score, minus the response's summed
            KL penalty when the KL goes in the reward).
        token_level_rewards: [B, T] reward per token.
        values: [B, T] critic values; required by "gae", ignored otherwise.
        group_ids: [B] group (prompt) id per response; required by the group-based
            estimators, ignored otherwise.
    """

    response_mask: torch.Tensor
    scores: torch.Tensor | None = None
    token_level_rewards: torch.Tensor | None = None
    values: torch.Tensor | None = None
    group_ids: GroupIds | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.token_level_rewards is None):
            raise ValueError("AdvantageInputs takes the rewards once: scores [B] or token_level_rewards [B, T], "
                             f"got {'both' if self.scores is not None else 'neither'}")

    def sequence_rewards(self) -> torch.Tensor:
        """[B] reward per response: `scores`, else the masked sum of the token rewards."""
        if self.scores is not None:
            return self.scores
        assert self.token_level_rewards is not None  # __post_init__
        return masked_sum(self.token_level_rewards, self.response_mask, dim=-1)

    def token_rewards(self) -> torch.Tensor:
        """[B, T] reward per token: `token_level_rewards`, else each score on its
        response's last valid token."""
        if self.token_level_rewards is not None:
            return self.token_level_rewards
        assert self.scores is not None  # __post_init__
        return place_scores_on_last_token(self.scores, self.response_mask)

    def require_group_ids(self, estimator: str) -> GroupIds:
        """Returns group_ids, or raises a ValueError naming the estimator that needs them."""
        if self.group_ids is None:
            raise ValueError(
                f"advantage estimator {estimator!r} needs group_ids (one prompt id per response); none given"
            )
        return self.group_ids


AdvantageEstimator = Callable[..., AdvantageOutput]


def _gae(inputs: AdvantageInputs, *, gamma: float, lam: float, whiten: bool, unbiased_std: bool) -> AdvantageOutput:
    if inputs.values is None:
        raise ValueError("advantage estimator 'gae' needs values [B, T] from a critic; none given (or choose 'grpo')")
    return estimators.compute_gae(
        inputs.token_rewards(), inputs.values, inputs.response_mask, gamma, lam, whiten, unbiased_std
    )


def _with_score_returns(inputs: AdvantageInputs, advantages: torch.Tensor) -> AdvantageOutput:
    return AdvantageOutput(advantages=advantages, returns=broadcast_to_tokens(inputs.sequence_rewards(), inputs.response_mask))


def _grpo(
    inputs: AdvantageInputs, *, eps: float, unbiased_std: bool, one_sample_group: OneSampleGroup
) -> AdvantageOutput:
    group_ids = inputs.require_group_ids("grpo")
    advantages = estimators.compute_grpo_advantages(
        inputs.sequence_rewards(),
        group_ids,
        inputs.response_mask,
        normalize_by_std=True,
        unbiased_std=unbiased_std,
        eps=eps,
        one_sample_group=one_sample_group,
    )
    return _with_score_returns(inputs, advantages)


def _drgrpo(inputs: AdvantageInputs, *, one_sample_group: OneSampleGroup) -> AdvantageOutput:
    group_ids = inputs.require_group_ids("drgrpo")
    advantages = estimators.compute_grpo_advantages(
        inputs.sequence_rewards(), group_ids, inputs.response_mask, normalize_by_std=False, one_sample_group=one_sample_group
    )
    return _with_score_returns(inputs, advantages)


def _rloo(inputs: AdvantageInputs, *, one_sample_group: OneSampleGroup) -> AdvantageOutput:
    group_ids = inputs.require_group_ids("rloo")
    advantages = estimators.compute_rloo_advantages(inputs.sequence_rewards(), group_ids, inputs.response_mask, one_sample_group)
    return _with_score_returns(inputs, advantages)


def _reinforce_plus_plus(inputs: AdvantageInputs, *, gamma: float, unbiased_std: bool) -> AdvantageOutput:
    return estimators.compute_reinforce_plus_plus_advantages(
        inputs.token_rewards(), inputs.response_mask, gamma, unbiased_std
    )


def _reinforce_plus_plus_baseline(
    inputs: AdvantageInputs, *, unbiased_std: bool, one_sample_group: OneSampleGroup
) -> AdvantageOutput:
    group_ids = inputs.require_group_ids("reinforce_plus_plus_baseline")
    advantages = estimators.compute_reinforce_plus_plus_baseline_advantages(
        inputs.sequence_rewards(), group_ids, inputs.response_mask, unbiased_std, one_sample_group
    )
    return _with_score_returns(inputs, advantages)


_ESTIMATORS: Mapping[str, AdvantageEstimator] = {
    "gae": _gae,
    "grpo": _grpo,
    "drgrpo": _drgrpo,
    "rloo": _rloo,
    "reinforce_plus_plus": _reinforce_plus_plus,
    "reinforce_plus_plus_baseline": _reinforce_plus_plus_baseline,
}

#: The names `get_advantage_estimator` and `AdvantageConfig.type` accept.
ADVANTAGE_ESTIMATOR_NAMES: tuple[str, ...] = tuple(_ESTIMATORS)
#: The estimators that read a reward per token (the others read one per response).
TOKEN_LEVEL_ESTIMATORS = frozenset({"gae", "reinforce_plus_plus"})


def reads_token_rewards(name: str) -> bool:
    """True when the estimator `name` reads token rewards [B, T] (a recursion over the
    tokens: GAE, REINFORCE++), False when it reads one reward per response [B]."""
    get_advantage_estimator(name)  # an unknown name is an error, not "per response"
    return name in TOKEN_LEVEL_ESTIMATORS


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Returns the estimator registered under `name`.

    The estimator is called as `estimator(inputs, **parameters)`, where the
    parameters are the fields of the matching config class (without `type`).

    Raises:
        ValueError: `name` is unknown; the message lists the known names.
    """
    try:
        return _ESTIMATORS[name]
    except KeyError:
        known = ", ".join(repr(known_name) for known_name in ADVANTAGE_ESTIMATOR_NAMES)
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {known}") from None


class _EstimatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class _GroupEstimatorConfig(_EstimatorConfig):
    one_sample_group: OneSampleGroup = "zero"
    """Advantage of a response alone in its group: "zero" (no peer to compare with, no
    gradient) or "score" (verl's: group mean 0 and std 1, so the raw score counts)."""


class _WhitenedEstimatorConfig(_EstimatorConfig):
    unbiased_std: bool = False
    """Std of the whitening over the batch's valid tokens: false divides the variance by
    N (population), true by N - 1 (Bessel's correction, as verl's masked_whiten)."""


class GAEConfig(_WhitenedEstimatorConfig):
    """PPO with a critic: generalised advantage estimation."""

    type: Literal["gae"] = "gae"
    """Selects GAE."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount factor per policy token."""
    lam: float = Field(1.0, ge=0.0, le=1.0)
    """GAE lambda: 1 = Monte-Carlo return minus value, 0 = one-step TD error."""
    whiten: bool = True
    """Whiten advantages over the valid tokens of the batch, as PPO implementations do
    by default (the bare function `compute_gae` defaults to False)."""


class GRPOConfig(_GroupEstimatorConfig):
    """GRPO: score minus group mean, divided by group std."""

    type: Literal["grpo"] = "grpo"
    """Selects GRPO."""
    eps: float = Field(estimators.GRPO_STD_EPS, gt=0.0)
    """Added to the group std before dividing."""
    unbiased_std: bool = True
    """Bessel-corrected group std (n - 1, as torch.std); False divides by n."""


class DrGRPOConfig(_GroupEstimatorConfig):
    """Dr.GRPO: score minus group mean, no std normalisation."""

    type: Literal["drgrpo"] = "drgrpo"
    """Selects Dr.GRPO (pair it with loss_agg_mode seq-mean-token-sum-norm)."""


class RLOOConfig(_GroupEstimatorConfig):
    """RLOO: score minus the mean of the other responses of its group."""

    type: Literal["rloo"] = "rloo"
    """Selects RLOO."""


class ReinforcePlusPlusConfig(_WhitenedEstimatorConfig):
    """REINFORCE++: discounted token returns whitened over the batch."""

    type: Literal["reinforce_plus_plus"] = "reinforce_plus_plus"
    """Selects REINFORCE++."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount factor per policy token."""


class ReinforcePlusPlusBaselineConfig(_GroupEstimatorConfig, _WhitenedEstimatorConfig):
    """REINFORCE++ with a group-mean baseline, then batch whitening."""

    type: Literal["reinforce_plus_plus_baseline"] = "reinforce_plus_plus_baseline"
    """Selects REINFORCE++ with a group baseline."""


#: One of the estimator configs, chosen by its `type` field.
AdvantageConfig = Annotated[
    Union[
        GAEConfig, GRPOConfig, DrGRPOConfig, RLOOConfig, ReinforcePlusPlusConfig, ReinforcePlusPlusBaselineConfig
    ],
    Field(discriminator="type"),
]


def compute_advantages(config: AdvantageConfig, inputs: AdvantageInputs) -> AdvantageOutput:
    """Runs the estimator `config.type` with the config's parameters.

    Args:
        config: one of the estimator configs.
        inputs: the batch; see AdvantageInputs for what each estimator requires.

    Returns:
        AdvantageOutput(advantages [B, T], returns [B, T]).
    """
    parameters = config.model_dump(exclude={"type"})
    return get_advantage_estimator(config.type)(inputs, **parameters)
