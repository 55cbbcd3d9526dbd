"""Configuration of the reward functions, chosen per data source.

Each reward kind is a pydantic model discriminated on ``type``; `RewardsConfig`
maps a row's ``data_source`` to one of them, with an optional default. In YAML:

    rewards:
      default: {type: arithmetic}
      by_data_source:
        reasoning_gym/basic_arithmetic: {type: final_number}
        openai/gsm8k: {type: gsm8k, format_weight: 0.1}
        lighteval/MATH: {type: math, timeout_s: 5}

The math rewards (gsm8k, math, final_number) report two terms, ``correctness`` and
``format`` (`roles.rewards.correctness`); ``method``, ``format_score`` and
``format_weight`` say how the score combines them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from roles.model_settings import ModelPlacement


class _StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ArithmeticRewardConfig(_StrictConfig):
    """The built-in arithmetic task: the response must start with the integer answer."""

    type: Literal["arithmetic"] = "arithmetic"
    """Selects `score_arithmetic`."""


class _AnswerCheckConfig(_StrictConfig):
    """Options shared by the rewards whose correctness math-verify checks."""

    format_score: float = 0.0
    """Score of a wrong answer the method read (verl's ``format_score``); 0: a wrong answer scores 0."""
    format_weight: float = 0.0
    """Added to the score of every response in the requested format, right or wrong (TRL's
    separate format reward and its weight); 0: the format does not change the score."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Time limit of one math-verify check (run in a child process), in seconds."""
    on_timeout: Literal["unscored", "zero"] = "unscored"
    """What a timed-out check yields: an unscored result (dropped by callers) or a plain 0."""


class Gsm8kRewardConfig(_AnswerCheckConfig):
    """GSM8K word problems graded on the final number; the format is ``#### <number>``."""

    type: Literal["gsm8k"] = "gsm8k"
    """Selects `score_gsm8k`."""
    method: Literal["answer", "strict", "flexible"] = "answer"
    """What the score counts: ``answer`` the final answer however phrased (``#### 72``, "the
    answer is 72", ``\\boxed{72}``); ``strict`` (verl) only ``#### <number>``; ``flexible``
    (verl) the last number in the response."""


class FinalNumberRewardConfig(_StrictConfig):
    """A numeric answer graded however the response phrases it: ``\\boxed{}``, "the answer
    is ...", ``<answer>`` tags, else the last number (`roles.rewards.final_answer`)."""

    type: Literal["final_number"] = "final_number"
    """Selects `score_final_number`."""


class MathRewardConfig(_AnswerCheckConfig):
    """MATH-style problems graded by math-verify; the format is a ``\\boxed{}`` answer."""

    type: Literal["math"] = "math"
    """Selects `score_math`."""
    method: Literal["answer", "boxed"] = "answer"
    """What the score counts: ``answer`` the final answer however phrased (the last box when
    there is one); ``boxed`` (verl, the MATH graders) only a boxed answer."""
    symbolic: bool = True
    """Let math-verify simplify when comparing; False: the parsed answers must be equal as written."""


class CodeRewardConfig(_StrictConfig):
    """Code answers run against tests in a sandbox (`roles.rewards.code.score_code`).

    Its options are validated by the code module when the reward is built, so this
    config does not duplicate them."""

    type: Literal["code"] = "code"
    """Selects `score_code` (as ``CodeReward``), imported when the reward is built."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Options of the code reward (the fields of ``roles.rewards.code.CodeExecutionConfig``:
    ``sandbox``, ``partial_credit``, ``max_concurrent``); unknown names are an error when built."""


class RewardModelRewardConfig(_StrictConfig, ModelPlacement):
    """A Hugging Face sequence-classification model scores each (prompt, response);
    ``dtype`` and ``device`` (`ModelPlacement`) say where its weights live."""

    type: Literal["reward_model"] = "reward_model"
    """Selects `RewardModel`."""
    path: str
    """Local directory holding the model and tokenizer (written by ``save_pretrained``)."""
    use_chat_template: bool = False
    """Score the tokenizer's chat template of (user: prompt, assistant: response) instead of prompt + response."""
    label_index: int | None = Field(default=None, ge=0)
    """The label whose logit/probability is the reward; required when the model has several labels."""
    output: Literal["logit", "probability"] = "logit"
    """``logit``: the raw logit; ``probability``: sigmoid (one label) or softmax probability (several)."""
    max_length: int | None = Field(default=None, gt=0)
    """Longest sequence in tokens; longer ones lose tokens from the left. None: no truncation."""
    batch_size: int = Field(default=8, gt=0)
    """Pairs per forward pass."""


class CustomRewardConfig(_StrictConfig):
    """A user function ``fn(prompt, response, ground_truth, **extra) -> float | dict | RewardResult``."""

    type: Literal["custom"] = "custom"
    """Selects a function by import path."""
    function: str
    """Import path ``package.module:function``."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""


RewardFunctionConfig = Annotated[
    Union[
        ArithmeticRewardConfig,
        Gsm8kRewardConfig,
        FinalNumberRewardConfig,
        MathRewardConfig,
        CodeRewardConfig,
        RewardModelRewardConfig,
        CustomRewardConfig,
    ],
    Field(discriminator="type"),
]
"""One reward function's configuration; ``type`` picks the kind."""


class RewardsConfig(_StrictConfig):
    """Which reward function grades the rows of each data source."""

    by_data_source: dict[str, RewardFunctionConfig] = Field(default_factory=dict)
    """Reward function per exact ``data_source`` value of a row."""
    default: RewardFunctionConfig | None = None
    """Reward function for data sources not listed; None makes an unlisted source an error."""
