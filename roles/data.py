"""Prompt datasets for RL training, and a checkpointable sampler over them.

`PromptDataset.load` reads JSONL and Parquet files into `PromptRow`s whose prompts
are already templated and tokenized, so the generator only indexes. Every row is
checked when loaded, not when first sampled hours later: a bad row fails the load
with an error naming its file and line (JSONL) or row (Parquet).

A row holds its prompt in one of two columns:

* ``messages_key``: chat messages ``[{"role": ..., "content": ...}, ...]``, always
  rendered with the tokenizer's chat template (generation prompt appended);
* ``prompt_key``: a plain string, used as written, or wrapped as one user message
  and rendered with the chat template when ``chat_template`` is set.

Messages win when a row has both. The rendered text is tokenized with
``add_special_tokens=False``: a chat template writes its own special tokens, and a
plain prompt is continued exactly as written.

`PromptSampler` walks the dataset batch after batch across epochs. Each epoch's
order is a pure function of ``(seed, epoch)``, so a sampler restored from
`PromptSampler.state_dict` continues with exactly the indices an uninterrupted one
would have given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import Column

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


class DataError(ValueError):
    """A data file or one of its rows cannot be used; the message names which and why."""


class DataConfig(BaseModel):
    """Which files hold the training prompts and how their rows are read."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    files: list[str] = Field(min_length=1)
    """JSONL (``.jsonl``, or ``.json`` with one object per line) or Parquet (``.parquet``) files, read in order.

    Relative paths are resolved against `PromptDataset.load`'s ``base_dir``, which the caller chooses."""
    prompt_key: str = "prompt"
    """Column holding a plain prompt string."""
    messages_key: str = "messages"
    """Column holding chat messages, a list of ``{"role": ..., "content": ...}``.

    It wins over ``prompt_key`` when a row has both."""
    ground_truth_key: str = "ground_truth"
    """Column holding the reference answer passed to the reward function; a row without it gets None."""
    data_source_key: str = "data_source"
    """Column naming the row's data source, which selects its reward function."""
    default_data_source: str | None = None
    """Data source of rows that have none; when None such a row is an error."""
    chat_template: bool = False
    """Wrap a plain prompt as one user message and apply the tokenizer's chat template.

    Rows with messages always use the template."""
    max_prompt_tokens: int | None = Field(default=None, gt=0)
    """Drop rows whose tokenized prompt is longer than this, counted in `PromptDataset.dropped`; None keeps all."""
    shuffle: bool = True
    """Visit the rows in a new random order every epoch; False visits them in file order."""
    seed: int = Field(default=0, ge=0)
    """Seed of the per-epoch order."""


@dataclass(frozen=True)
class PromptRow:
    """One training prompt, ready to generate from."""

    index: int
    """Position in the loaded dataset (after dropping rows that are too long)."""
    prompt: str
    """The text given to the model, after the chat template if one applies."""
    prompt_ids: list[int]
    """``prompt`` tokenized without added special tokens."""
    ground_truth: Any
    """The reference answer, as stored in the file; None when the row has none."""
    data_source: str
    """Selects the reward function for this row."""
    extra: dict[str, Any]
    """Every column of the row other than the prompt, messages, ground truth and data source columns."""
    record: dict[str, Any] = field(default_factory=dict)
    """The row as read from its file: what a multi-turn episode starts from (roles.episodes)."""


def prompt_batch(rows: Sequence[PromptRow], group: str | None = None) -> Batch:
    """Rows as a prompt batch for the generators: the `Column` s ``prompt_ids``,
    ``prompt``, ``ground_truth``, ``data_source``, ``prompt_index`` and, with `group`,
    ``uid`` = ``<group>-<i>`` (the samples of one prompt form one group)."""
    columns: dict[str, list[Any]] = {
        Column.PROMPT_IDS: [row.prompt_ids for row in rows],
        Column.PROMPT: [row.prompt for row in rows],
        Column.GROUND_TRUTH: [row.ground_truth for row in rows],
        Column.DATA_SOURCE: [row.data_source for row in rows],
        Column.PROMPT_INDEX: [row.index for row in rows],
    }
    if group is not None:
        columns[Column.UID] = [f"{group}-{i}" for i in range(len(rows))]
    return Batch(columns=columns)


@dataclass(frozen=True)
class _ParsedRow:
    """A row checked and templated, not yet tokenized."""

    prompt: str
    ground_truth: Any
    data_source: str
    extra: dict[str, Any]
    record: dict[str, Any]


class PromptDataset:
    """An indexable list of `PromptRow`s."""

    def __init__(self, rows: list[PromptRow], dropped: int = 0):
        self.rows = rows
        self.dropped = dropped
        """How many rows `load` dropped for being longer than ``max_prompt_tokens``."""

    @classmethod
    def load(
        cls, config: DataConfig, tokenizer: PreTrainedTokenizerBase, base_dir: Path | None = None
    ) -> PromptDataset:
        """Read, template, tokenize and filter every row of ``config.files``, in order.

        Args:
            config: the files and how to read their rows.
            tokenizer: tokenizes the prompts; its chat template renders messages.
            base_dir: relative file paths are resolved against it when given.

        Raises:
            DataError: a file is missing or unreadable, a row is malformed, or no row is left.
        """
        parsed: list[_ParsedRow] = []
        for name in config.files:
            path = Path(name)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            for location, record in _read_records(path):
                parsed.append(_parse_row(record, location, config, tokenizer))
        if not parsed:
            raise DataError(f"no rows in data files {config.files}")

        token_ids = tokenizer([row.prompt for row in parsed], add_special_tokens=False)["input_ids"]
        rows: list[PromptRow] = []
        for row, ids in zip(parsed, token_ids):
            if config.max_prompt_tokens is not None and len(ids) > config.max_prompt_tokens:
                continue
            rows.append(PromptRow(len(rows), row.prompt, list(ids), row.ground_truth, row.data_source, row.extra, row.record))
        dropped = len(parsed) - len(rows)
        if not rows:
            raise DataError(
                f"all {dropped} rows of {config.files} are longer than max_prompt_tokens="
                f"{config.max_prompt_tokens}; raise max_prompt_tokens"
            )
        if dropped:
            logger.warning(
                "dropped %d of %d prompts longer than max_prompt_tokens=%d",
                dropped,
                len(parsed),
                config.max_prompt_tokens,
            )
        return cls(rows, dropped)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]


def file_data_sources(path: Path, config: DataConfig) -> dict[str, str]:
    """Each data source the rows of one data file name, with the location of its first row
    (`troupe validate` checks each has a reward function before the run starts).

    A row without one counts as ``default_data_source``; a row with neither is left out
    (`PromptDataset.load` reports it).

    Raises:
        DataError: the file is missing, has an unknown extension, or a line is not a JSON object.
    """
    sources: dict[str, str] = {}
    for location, record in _read_records(path):
        source = record.get(config.data_source_key)
        source = config.default_data_source if source is None else source
        if isinstance(source, str):
            sources.setdefault(source, location)
    return sources


def _read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Return ``(location, row)`` pairs of one file; a location reads ``file:line`` or ``file row N``."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet

        records = pyarrow.parquet.read_table(path).to_pylist()
        return [(f"{path} row {number}", record) for number, record in enumerate(records)]
    raise DataError(
        f"data file {path} has unknown extension {path.suffix!r}; "
        f"use one of {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                # Re-raised with the file and line: json alone names neither.
                raise DataError(
                    f"{location}: malformed JSON ({error.msg}); "
                    f"{', '.join(JSONL_SUFFIXES)} files hold one JSON object per line"
                ) from error
            if not isinstance(record, dict):
                raise DataError(f"{location}: expected a JSON object, got {type(record).__name__}")
            records.append((location, record))
    return records


def _parse_row(
    record: dict[str, Any], location: str, config: DataConfig, tokenizer: PreTrainedTokenizerBase
) -> _ParsedRow:
    messages = record.get(config.messages_key)
    prompt = record.get(config.prompt_key)
    if messages is not None:
        _check_messages(messages, location, config.messages_key)
        text = _apply_chat_template(tokenizer, messages, location)
    elif prompt is not None:
        if not isinstance(prompt, str):
            raise DataError(
                f"{location}: column {config.prompt_key!r} holds a {type(prompt).__name__}, not a string; "
                f"if it holds chat messages, set messages_key: {config.prompt_key}"
            )
        if config.chat_template:
            text = _apply_chat_template(tokenizer, [{"role": "user", "content": prompt}], location)
        else:
            text = prompt
    else:
        raise DataError(
            f"{location}: row has neither {config.prompt_key!r} nor {config.messages_key!r}; "
            f"its columns are {sorted(record)} (set prompt_key or messages_key)"
        )

    data_source = record.get(config.data_source_key)
    if data_source is None:
        if config.default_data_source is None:
            raise DataError(f"{location}: row has no {config.data_source_key!r} and default_data_source is not set")
        data_source = config.default_data_source
    if not isinstance(data_source, str):
        raise DataError(
            f"{location}: column {config.data_source_key!r} holds a {type(data_source).__name__}, not a string"
        )

    used = {config.prompt_key, config.messages_key, config.ground_truth_key, config.data_source_key}
    extra = {key: value for key, value in record.items() if key not in used}
    return _ParsedRow(text, record.get(config.ground_truth_key), data_source, extra, record)


def _check_messages(messages: Any, location: str, key: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{location}: column {key!r} must be a non-empty list of messages")
    for position, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataError(
                f"{location}: message {position} of column {key!r} must be "
                f'{{"role": <string>, "content": <string>}}, got {message!r}'
            )


def _apply_chat_template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], location: str) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{location}: this row needs a chat template but the tokenizer has none; "
            "use a tokenizer with a chat template, or give plain prompts with chat_template: false"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class PromptSampler:
    """Deterministic shuffled sampler over a dataset, epoch after epoch, whose position is checkpointable.

    The order of epoch ``e`` is a permutation of ``range(size)`` that depends only on
    ``(seed, e)`` (the identity when ``shuffle`` is False). ``position`` counts the
    indices of the current epoch already handed out; it is always below ``size``,
    since finishing an epoch moves to position 0 of the next one.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool = True, seed: int = 0):
        if size <= 0:
            raise ValueError(f"PromptSampler needs a non-empty dataset, got size={size}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    @property
    def epoch(self) -> int:
        """Epochs completed so far."""
        return self._epoch

    @property
    def position(self) -> int:
        """Indices of the current epoch already handed out."""
        return self._position

    def next_batch(self) -> list[int]:
        """Return the next ``batch_size`` dataset indices, continuing into the next epoch as needed."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            take = min(self.batch_size - len(batch), self.size - self._position)
            batch.extend(self._order[self._position : self._position + take].tolist())
            self._position += take
            if self._position == self.size:
                self._epoch += 1
                self._position = 0
                self._order = self._epoch_order(self._epoch)
        return batch

    def state_dict(self) -> dict[str, int]:
        """Return the sampler's position: ``{"epoch", "position", "seed", "size"}``."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict` taken from a sampler over the same dataset and seed.

        Raises:
            ValueError: the state is incomplete, out of range, or from a different size or seed.
        """
        missing = {"epoch", "position", "seed", "size"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}")
        if state["size"] != self.size:
            raise ValueError(
                f"sampler state is for a dataset of {state['size']} rows, this one has {self.size}; "
                "the data files or max_prompt_tokens changed since the checkpoint"
            )
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler has seed {self.seed}")
        if state["epoch"] < 0 or not 0 <= state["position"] < self.size:
            raise ValueError(
                f"sampler state epoch={state['epoch']} position={state['position']} is out of range "
                f"for a dataset of {self.size} rows"
            )
        self._epoch = state["epoch"]
        self._position = state["position"]
        self._order = self._epoch_order(self._epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        # Seeding from the pair (not seed + epoch) keeps seed 0's second epoch
        # from repeating seed 1's first.
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)
