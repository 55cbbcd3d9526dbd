"""Pure RL algorithms: advantage estimators, KL estimators and controllers, losses.

Everything here is a function of torch tensors (or a small stateful KL controller)
with no I/O, no processes and no distributed calls, so it runs and tests on a CPU in
milliseconds. The controller role calls the advantage and KL-penalty functions and
decides which log-probs are "old"; the trainer and critic roles call the losses; every
role that computes log-probs does it in chunks of tokens. Formulas and config blocks
are in docs/algorithms.md.
"""

from roles.algorithms.advantage_registry import (
    ADVANTAGE_ESTIMATOR_NAMES,
    AdvantageConfig,
    AdvantageEstimator,
    AdvantageInputs,
    DrGRPOConfig,
    GAEConfig,
    GRPOConfig,
    ReinforcePlusPlusBaselineConfig,
    ReinforcePlusPlusConfig,
    RLOOConfig,
    compute_advantages,
    get_advantage_estimator,
)
from roles.algorithms.advantages import (
    AdvantageOutput,
    broadcast_to_tokens,
    compute_discounted_returns,
    compute_gae,
    compute_grpo_advantages,
    compute_reinforce_plus_plus_advantages,
    compute_reinforce_plus_plus_baseline_advantages,
    compute_rloo_advantages,
)
from roles.algorithms.aggregation import LOSS_AGG_MODES, LossAggMode, aggregate_loss, micro_batch_weight
from roles.algorithms.chunked_logprobs import TokenLogProbs, chunked_token_logprobs
from roles.algorithms.entropy import entropy_from_logits, logprobs_from_logits
from roles.algorithms.groups import (
    ONE_SAMPLE_GROUP_CHOICES,
    GroupIds,
    GroupStats,
    OneSampleGroup,
    group_stats,
    zero_variance_share,
)
from roles.algorithms.kl import (
    KL_ESTIMATOR_NAMES,
    KLConfig,
    KLEstimatorName,
    KLLossOutput,
    KLPenaltyOutput,
    apply_kl_penalty,
    compute_kl,
    compute_kl_loss,
    kl_abs,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_metrics,
    place_scores_on_last_token,
    straight_through_kl,
)
from roles.algorithms.kl_control import (
    AdaptiveKLController,
    AdaptiveKLControllerConfig,
    FixedKLController,
    FixedKLControllerConfig,
    KLController,
    KLControllerConfig,
    build_kl_controller,
)
from roles.algorithms.masked import masked_mean, masked_sum, masked_whiten
from roles.algorithms.old_logprobs import (
    ImportanceWeights,
    RecomputeLogprobs,
    old_logprob_source,
    optimizer_steps_per_update,
    policy_logprobs_before_update,
    select_old_logprobs,
    truncated_importance_weights,
)
from roles.algorithms.policy_loss import PolicyLossConfig, PolicyLossOutput, ppo_policy_loss
from roles.algorithms.value_loss import ValueLossConfig, ValueLossOutput, clipped_value_loss

__all__ = [
    "ADVANTAGE_ESTIMATOR_NAMES",
    "KL_ESTIMATOR_NAMES",
    "LOSS_AGG_MODES",
    "ONE_SAMPLE_GROUP_CHOICES",
    "AdaptiveKLController",
    "AdaptiveKLControllerConfig",
    "AdvantageConfig",
    "AdvantageEstimator",
    "AdvantageInputs",
    "AdvantageOutput",
    "DrGRPOConfig",
    "FixedKLController",
    "FixedKLControllerConfig",
    "GAEConfig",
    "GRPOConfig",
    "GroupIds",
    "GroupStats",
    "ImportanceWeights",
    "KLConfig",
    "KLController",
    "KLControllerConfig",
    "KLEstimatorName",
    "KLLossOutput",
    "KLPenaltyOutput",
    "LossAggMode",
    "OneSampleGroup",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "RLOOConfig",
    "RecomputeLogprobs",
    "ReinforcePlusPlusBaselineConfig",
    "ReinforcePlusPlusConfig",
    "TokenLogProbs",
    "ValueLossConfig",
    "ValueLossOutput",
    "aggregate_loss",
    "apply_kl_penalty",
    "broadcast_to_tokens",
    "build_kl_controller",
    "chunked_token_logprobs",
    "clipped_value_loss",
    "compute_advantages",
    "compute_discounted_returns",
    "compute_gae",
    "compute_grpo_advantages",
    "compute_kl",
    "compute_kl_loss",
    "compute_reinforce_plus_plus_advantages",
    "compute_reinforce_plus_plus_baseline_advantages",
    "compute_rloo_advantages",
    "entropy_from_logits",
    "get_advantage_estimator",
    "group_stats",
    "kl_abs",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_metrics",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "micro_batch_weight",
    "old_logprob_source",
    "optimizer_steps_per_update",
    "place_scores_on_last_token",
    "policy_logprobs_before_update",
    "ppo_policy_loss",
    "select_old_logprobs",
    "straight_through_kl",
    "truncated_importance_weights",
    "zero_variance_share",
]
