"""Reward from a Hugging Face sequence-classification model.

The model scores the text ``prompt + response`` (the response continues the
prompt, as generated) or, with ``use_chat_template``, the tokenizer's chat
template applied to a user turn (the prompt) and an assistant turn (the
response).

The score of a sequence is read from the model's logits at its last real token:

- ``num_labels == 1``: the logit itself (``output="logit"``), or its sigmoid
  (``output="probability"``). ``label_index`` must be unset or 0.
- ``num_labels > 1``: ``label_index`` is required; the score is that label's
  logit, or its softmax probability over the labels.

Padding: batches are padded on the right whatever the saved tokenizer says.
Models with learned absolute positions (GPT-2 and kin) number positions from
the first token, so left padding would shift them and change the scores; right
padding is correct for every architecture, so a batched score equals the
unbatched one. The model's ``pad_token_id`` is set to the tokenizer's, because
Hugging Face finds the last real token by looking for padding. A tokenizer
without a pad token pads with its end-of-sequence token.
Sequences longer than ``max_length`` lose tokens from the left, so the end of
the response, which the score is read from, is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from roles.model_settings import Dtype
from roles.models import DTYPES
from roles.rewards.types import RewardResult

ScoreOutput = Literal["logit", "probability"]


class RewardModel:
    """Scores (prompt, response) pairs with a sequence-classification model.

    Call it like any reward function, or use `score_batch` to score many pairs
    in batches of ``batch_size``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        use_chat_template: bool = False,
        label_index: int | None = None,
        output: ScoreOutput = "logit",
        max_length: int | None = None,
        batch_size: int = 8,
    ) -> None:
        num_labels = model.config.num_labels
        if num_labels > 1 and label_index is None:
            raise ValueError(
                f"the reward model has {num_labels} labels; set label_index to the label whose "
                "logit or probability is the reward"
            )
        if label_index is not None and not 0 <= label_index < num_labels:
            raise ValueError(f"label_index {label_index} is out of range for a model with {num_labels} labels")
        if output not in ("logit", "probability"):
            raise ValueError(f"output must be 'logit' or 'probability', got {output!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if use_chat_template and not tokenizer.chat_template:
            raise ValueError(
                "use_chat_template is set but the tokenizer has no chat_template; "
                "unset it or save a tokenizer with a chat template"
            )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("the reward model's tokenizer has neither a pad nor an eos token; save it with one")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_chat_template = use_chat_template
        self.label_index = label_index if label_index is not None else 0
        self.output = output
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: Dtype = "float32",
        **options: Any,
    ) -> RewardModel:
        """Load the model and tokenizer saved with ``save_pretrained`` in ``path``.

        Args:
            path: a local directory (nothing is downloaded).
            device: the torch device to run on, e.g. ``"cpu"`` or ``"cuda:0"``.
            dtype: the parameter dtype.
            **options: the keyword arguments of `RewardModel`.

        Raises:
            FileNotFoundError: ``path`` is not a directory.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"reward model path {str(directory)!r} is not a directory; point it at a folder "
                "written by save_pretrained (model and tokenizer)"
            )
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
        model = model.to(device=torch.device(device), dtype=DTYPES[dtype])
        return cls(model, tokenizer, **options)

    def format_text(self, prompt: str, response: str) -> str:
        """The text the model scores for one pair (see the module docstring)."""
        if not self.use_chat_template:
            return prompt + response
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.inference_mode()
    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Score pairs in batches of ``batch_size``.

        Args:
            prompts, responses: equal-length sequences; pair i is (prompts[i], responses[i]).

        Returns:
            One float per pair, in order.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; pass one of each per pair")
        texts = [self.format_text(prompt, response) for prompt, response in zip(prompts, responses)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores.extend(self._score_texts(texts[start : start + self.batch_size]))
        return scores

    def _score_texts(self, texts: list[str]) -> list[float]:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            # a chat template already wrote the special tokens it wants
            add_special_tokens=not self.use_chat_template,
            return_tensors="pt",
        ).to(self.model.device)
        logits = self.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        logits = logits.float()  # [batch, num_labels]
        if self.output == "logit":
            values = logits[:, self.label_index]
        elif logits.shape[1] == 1:
            values = torch.sigmoid(logits[:, 0])
        else:
            values = torch.softmax(logits, dim=-1)[:, self.label_index]
        return values.tolist()

    def score_many(
        self, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[Any]
    ) -> list[RewardResult]:
        """`score_batch` as reward results; ground truths are not used."""
        return [RewardResult(score=score) for score in self.score_batch(prompts, responses)]

    def __call__(self, prompt: str, response: str, ground_truth: Any = None, **extra: Any) -> RewardResult:
        """Score one pair; ``ground_truth`` and ``extra`` are ignored."""
        return RewardResult(score=self.score_batch([prompt], [response])[0])
