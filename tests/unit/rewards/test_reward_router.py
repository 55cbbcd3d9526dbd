"""Reward configs validate strictly, and the router picks a function per data source."""

import pytest
from pydantic import TypeAdapter, ValidationError

from roles.rewards import (
    ArithmeticRewardConfig,
    BatchRewardFn,
    CodeRewardConfig,
    Gsm8kRewardConfig,
    MathRewardConfig,
    RewardFunctionConfig,
    RewardResult,
    RewardRouter,
    RewardsConfig,
    UnknownDataSourceError,
    build_reward_fn,
)

FUNCTION_CONFIG = TypeAdapter(RewardFunctionConfig)


def constant(score):
    def reward(prompt, response, ground_truth, **extra):
        return RewardResult(score=score, info={"extra": sorted(extra)})

    return reward


def test_type_selects_the_config_class_with_its_defaults():
    assert FUNCTION_CONFIG.validate_python({"type": "arithmetic"}) == ArithmeticRewardConfig()
    assert FUNCTION_CONFIG.validate_python({"type": "gsm8k"}) == Gsm8kRewardConfig(method="answer", format_score=0.0, format_weight=0.0)
    assert FUNCTION_CONFIG.validate_python({"type": "math"}).method == "answer"
    assert FUNCTION_CONFIG.validate_python({"type": "math", "timeout_s": 2}).timeout_s == 2.0
    assert FUNCTION_CONFIG.validate_python({"type": "code", "options": {"a": 1}}) == CodeRewardConfig(options={"a": 1})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "gsm8k", "mode": "strict"}, "Extra inputs are not permitted"),
        ({"type": "gsm8k", "method": "loose"}, "'answer', 'strict' or 'flexible'"),
        ({"type": "math", "method": "strict"}, "'answer' or 'boxed'"),
        ({"type": "math", "timeout_s": 0}, "greater than 0"),
        ({"type": "rouge"}, "does not match any of the expected tags"),
        ({"type": "reward_model"}, "path"),
        ({"type": "custom"}, "function"),
    ],
)
def test_invalid_reward_config_names_the_problem(spec, message):
    with pytest.raises(ValidationError, match=message):
        FUNCTION_CONFIG.validate_python(spec)


def test_built_functions_carry_their_options():
    gsm8k = build_reward_fn(Gsm8kRewardConfig(method="flexible", format_score=0.2))
    weighted = build_reward_fn(Gsm8kRewardConfig(format_weight=0.5))
    math = build_reward_fn(MathRewardConfig(symbolic=False))
    boxed_only = build_reward_fn(MathRewardConfig(method="boxed"))

    assert gsm8k("q", "so 71 apples", "72").score == 0.2
    assert gsm8k("q", "so 72 apples", "72").score == 1.0
    assert weighted("q", "#### 72", "72").score == 1.5
    assert math("q", r"\boxed{2x+2}", "2(x+1)").score == 0.0  # symbolic off: no simplification
    assert boxed_only("q", "The final answer is $3$.", "3").score == 0.0


def test_custom_config_builds_the_named_function_with_its_kwargs(tmp_path, monkeypatch):
    (tmp_path / "router_user_reward.py").write_text(
        "def score(prompt, response, ground_truth, bonus=0.0, **extra):\n    return len(response) + bonus\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = FUNCTION_CONFIG.validate_python({"type": "custom", "function": "router_user_reward:score", "kwargs": {"bonus": 0.5}})

    assert build_reward_fn(config)("q", "abc", None).score == 3.5


def test_rows_are_routed_by_data_source_with_a_default():
    router = RewardRouter({"a": constant(1.0), "b": constant(2.0)}, default=constant(9.0))

    assert router("q", "r", "g", data_source="a").score == 1.0
    assert router("q", "r", "g", data_source="b", index=4).info == {"extra": ["index"]}
    assert router("q", "r", "g", data_source="unlisted").score == 9.0


def test_unknown_data_source_without_default_is_an_error_naming_the_fix():
    router = RewardRouter({"a": constant(1.0)})

    with pytest.raises(UnknownDataSourceError, match=r"data_source 'b' \(configured: \['a'\]\); add it under rewards.by_data_source or set rewards.default"):
        router("q", "r", "g", data_source="b")


def test_router_from_config_grades_each_source_with_its_reward():
    config = RewardsConfig.model_validate(
        {
            "default": {"type": "arithmetic"},
            "by_data_source": {"openai/gsm8k": {"type": "gsm8k", "method": "flexible"}, "math": {"type": "math"}},
        }
    )
    router = RewardRouter.from_config(config)

    results = router.score_batch(
        prompts=["12+7=", "q", "q"],
        responses=["19", "so 72.", r"\boxed{\frac12}"],
        ground_truths=[19, "#### 72", "0.5"],
        data_sources=["arithmetic", "openai/gsm8k", "math"],
    )

    assert [result.score for result in results] == [1.0, 1.0, 1.0]
    assert [result.extracted for result in results] == ["19", "72", r"\frac12"]


def test_batch_passes_per_row_extras_and_keeps_row_order():
    router = RewardRouter({"a": constant(1.0), "b": constant(2.0)})

    results = router.score_batch(["q"] * 3, ["r"] * 3, [None] * 3, ["b", "a", "b"], extras=[{"x": 1}, {}, {"y": 2}])

    assert [(result.score, result.info["extra"]) for result in results] == [(2.0, ["x"]), (1.0, []), (2.0, ["y"])]


def test_batch_with_mismatched_lengths_is_rejected():
    with pytest.raises(ValueError, match="one entry per row"):
        RewardRouter({}, default=constant(1.0)).score_batch(["q", "q"], ["r"], [None], ["a"])


def test_rewards_config_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RewardsConfig.model_validate({"by_source": {}})


def test_code_config_builds_a_batchable_sandbox_reward_and_checks_its_options():
    pytest.importorskip("roles.rewards.code", reason="the sandboxed code reward is built in parallel")

    reward = build_reward_fn(CodeRewardConfig(options={"partial_credit": False}))

    assert isinstance(reward, BatchRewardFn)
    with pytest.raises(ValidationError, match="partial_credits"):
        build_reward_fn(CodeRewardConfig(options={"partial_credits": False}))
