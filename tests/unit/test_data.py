"""Prompt datasets load JSONL and Parquet alike, and the sampler resumes exactly."""

import json
import logging
import string

import pyarrow
import pyarrow.parquet
import pytest
from pydantic import ValidationError
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from roles.data import DataConfig, DataError, PromptDataset, PromptRow, PromptSampler

CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

ROWS = [
    {"prompt": "1+1=", "ground_truth": "2", "data_source": "arithmetic", "level": 1},
    {"prompt": "2*3=", "ground_truth": "6", "data_source": "arithmetic", "level": 2},
    {"prompt": "10-4=", "ground_truth": "6", "data_source": "arithmetic", "level": 3},
]


@pytest.fixture
def tokenizer():
    """A character-level tokenizer: one token per printable ASCII character."""
    vocab = {"[UNK]": 0}
    for character in string.printable:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


@pytest.fixture
def plain_tokenizer(tokenizer):
    tokenizer.chat_template = None
    return tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    # Column names from every row: pyarrow's from_pylist would take the first row's only.
    columns = {key: [row.get(key) for row in rows] for row in rows for key in row}
    pyarrow.parquet.write_table(pyarrow.table(columns), path)
    return path


def load(tokenizer, *paths, **options):
    return PromptDataset.load(DataConfig(files=[str(path) for path in paths], **options), tokenizer)


def char_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# Loading


def test_jsonl_and_parquet_files_load_the_same_rows(tmp_path, tokenizer):
    from_jsonl = load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", ROWS))
    from_parquet = load(tokenizer, write_parquet(tmp_path / "rows.parquet", ROWS))

    assert list(from_jsonl) == list(from_parquet)
    assert from_jsonl[1] == PromptRow(
        index=1,
        prompt="2*3=",
        prompt_ids=char_ids(tokenizer, "2*3="),
        ground_truth="6",
        data_source="arithmetic",
        extra={"level": 2},
        record=ROWS[1],  # the row as read: a multi-turn episode starts from it
    )


def test_files_are_read_in_order_and_indexed_across_files(tmp_path, tokenizer):
    first = write_jsonl(tmp_path / "first.jsonl", ROWS[:2])
    second = write_parquet(tmp_path / "second.parquet", ROWS[2:])

    dataset = load(tokenizer, first, second)

    assert len(dataset) == 3
    assert [row.prompt for row in dataset] == ["1+1=", "2*3=", "10-4="]
    assert [row.index for row in dataset] == [0, 1, 2]


def test_relative_paths_resolve_against_base_dir(tmp_path, tokenizer):
    write_jsonl(tmp_path / "rows.jsonl", ROWS)

    dataset = PromptDataset.load(DataConfig(files=["rows.jsonl"]), tokenizer, base_dir=tmp_path)

    assert len(dataset) == 3


def test_json_suffix_is_read_as_json_lines_and_blank_lines_are_skipped(tmp_path, tokenizer):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")

    assert [row.prompt for row in load(tokenizer, path)] == ["1+1=", "2*3="]


def test_plain_prompt_is_used_as_written_without_the_chat_template(tmp_path, tokenizer):
    dataset = load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", ROWS[:1]))

    assert dataset[0].prompt == "1+1="
    assert dataset[0].prompt_ids == char_ids(tokenizer, "1+1=")


def test_chat_template_wraps_a_plain_prompt_as_one_user_message(tmp_path, tokenizer):
    dataset = load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", ROWS[:1]), chat_template=True)

    assert dataset[0].prompt == "<user>1+1=\n<assistant>"
    assert dataset[0].prompt_ids == char_ids(tokenizer, "<user>1+1=\n<assistant>")


def test_messages_always_use_the_chat_template(tmp_path, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
    path = write_jsonl(tmp_path / "rows.jsonl", [{"messages": messages, "ground_truth": 2, "data_source": "a"}])

    dataset = load(tokenizer, path, chat_template=False)

    assert dataset[0].prompt == "<system>Be brief.\n<user>1+1=\n<assistant>"
    assert dataset[0].ground_truth == 2
    assert dataset[0].extra == {}


def test_messages_win_over_a_prompt_and_both_columns_stay_out_of_extra(tmp_path, tokenizer):
    row = {"prompt": "ignored", "messages": [{"role": "user", "content": "used"}], "data_source": "a", "id": 7}

    dataset = load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", [row]))

    assert dataset[0].prompt == "<user>used\n<assistant>"
    assert dataset[0].extra == {"id": 7}


def test_parquet_rows_may_mix_messages_and_plain_prompts(tmp_path, tokenizer):
    rows = [
        {"prompt": "plain", "messages": None, "data_source": "a"},
        {"prompt": None, "messages": [{"role": "user", "content": "chat"}], "data_source": "a"},
    ]

    dataset = load(tokenizer, write_parquet(tmp_path / "rows.parquet", rows))

    assert [row.prompt for row in dataset] == ["plain", "<user>chat\n<assistant>"]


def test_custom_column_names_are_honoured(tmp_path, tokenizer):
    row = {"question": "q?", "answer": "a", "source": "gsm8k", "prompt": "not this one"}

    dataset = load(
        tokenizer,
        write_jsonl(tmp_path / "rows.jsonl", [row]),
        prompt_key="question",
        ground_truth_key="answer",
        data_source_key="source",
    )

    assert (dataset[0].prompt, dataset[0].ground_truth, dataset[0].data_source) == ("q?", "a", "gsm8k")
    assert dataset[0].extra == {"prompt": "not this one"}


def test_default_data_source_fills_rows_without_one(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a"}, {"prompt": "b", "data_source": "own"}])

    dataset = load(tokenizer, path, default_data_source="fallback")

    assert [row.data_source for row in dataset] == ["fallback", "own"]
    assert dataset[0].ground_truth is None


def test_rows_longer_than_max_prompt_tokens_are_dropped_counted_and_logged(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)  # prompts of 4, 4 and 5 characters

    with caplog.at_level(logging.WARNING, logger="roles.data"):
        dataset = load(tokenizer, path, max_prompt_tokens=4)

    assert [row.prompt for row in dataset] == ["1+1=", "2*3="]
    assert dataset.dropped == 1
    assert "dropped 1 of 3 prompts longer than max_prompt_tokens=4" in caplog.text


def test_rows_are_reindexed_after_dropping(tmp_path, tokenizer):
    rows = [ROWS[2], ROWS[0]]  # the long one first

    dataset = load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", rows), max_prompt_tokens=4)

    assert dataset[0].index == 0 and dataset[0].prompt == "1+1="


def test_max_prompt_tokens_counts_the_templated_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])

    assert len(load(tokenizer, path, max_prompt_tokens=4)) == 1
    with pytest.raises(DataError, match="all 1 rows .* longer than max_prompt_tokens=4"):
        load(tokenizer, path, max_prompt_tokens=4, chat_template=True)


def test_nothing_is_dropped_without_a_limit(tmp_path, tokenizer):
    assert load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", ROWS)).dropped == 0


# Load errors


def test_missing_file_is_named(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"data file .*absent\.jsonl does not exist"):
        load(tokenizer, tmp_path / "absent.jsonl")


def test_unknown_extension_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "rows.csv"
    path.write_text("prompt\nhello\n")

    with pytest.raises(DataError, match=r"rows\.csv has unknown extension '\.csv'"):
        load(tokenizer, path)


def test_malformed_json_line_names_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "unterminated\n')

    with pytest.raises(DataError, match=r"rows\.jsonl:2: malformed JSON"):
        load(tokenizer, path)


def test_json_line_that_is_not_an_object_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("[1, 2]\n")

    with pytest.raises(DataError, match=r"rows\.jsonl:1: expected a JSON object, got list"):
        load(tokenizer, path)


def test_row_without_prompt_or_messages_names_file_and_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", [ROWS[0], {"question": "q", "data_source": "a"}])

    with pytest.raises(DataError, match=r"rows\.jsonl:2: row has neither 'prompt' nor 'messages'"):
        load(tokenizer, path)


def test_parquet_row_without_prompt_or_messages_names_file_and_row(tmp_path, tokenizer):
    rows = [{"prompt": "a", "data_source": "a"}, {"prompt": None, "data_source": "a"}]

    with pytest.raises(DataError, match=r"rows\.parquet row 1: row has neither"):
        load(tokenizer, write_parquet(tmp_path / "rows.parquet", rows))


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", "must be a non-empty list of messages"),
        ([], "must be a non-empty list of messages"),
        (["hello"], "message 0 of column 'messages' must be"),
        ([{"role": "user"}], "message 0 of column 'messages' must be"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], "message 1 of column 'messages' must be"),
    ],
)
def test_badly_shaped_messages_are_an_error(tmp_path, tokenizer, messages, message):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"messages": messages, "data_source": "a"}])

    with pytest.raises(DataError, match=rf"rows\.jsonl:1: .*{message}"):
        load(tokenizer, path)


def test_prompt_that_is_not_a_string_suggests_messages_key(tmp_path, tokenizer):
    row = {"prompt": [{"role": "user", "content": "hi"}], "data_source": "a"}

    with pytest.raises(DataError, match="set messages_key: prompt"):
        load(tokenizer, write_jsonl(tmp_path / "rows.jsonl", [row]))


def test_missing_data_source_without_default_names_the_row(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", [ROWS[0], {"prompt": "a"}])

    with pytest.raises(DataError, match=r"rows\.jsonl:2: row has no 'data_source' and default_data_source"):
        load(tokenizer, path)


def test_empty_file_is_an_error(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n")

    with pytest.raises(DataError, match="no rows in data files"):
        load(tokenizer, path)


def test_chat_template_needed_but_absent_is_an_error(tmp_path, plain_tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])

    assert load(plain_tokenizer, path)[0].prompt == "1+1="
    with pytest.raises(DataError, match="rows.jsonl:1: this row needs a chat template but the tokenizer has none"):
        load(plain_tokenizer, path, chat_template=True)


def test_messages_with_a_tokenizer_without_chat_template_is_an_error(tmp_path, plain_tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"messages": [{"role": "user", "content": "a"}], "data_source": "a"}])

    with pytest.raises(DataError, match="the tokenizer has none"):
        load(plain_tokenizer, path)


def test_data_config_rejects_unknown_fields_and_empty_file_lists():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DataConfig(files=["a.jsonl"], prompt_column="q")
    with pytest.raises(ValidationError, match="at least 1 item"):
        DataConfig(files=[])
    with pytest.raises(ValidationError, match="greater than 0"):
        DataConfig(files=["a.jsonl"], max_prompt_tokens=0)


def test_every_data_config_field_is_documented():
    assert all(field.description for field in DataConfig.model_fields.values())


# Sampler


def test_unshuffled_sampler_visits_indices_in_order():
    sampler = PromptSampler(size=5, batch_size=2, shuffle=False)

    assert [sampler.next_batch() for _ in range(3)] == [[0, 1], [2, 3], [4, 0]]


def test_samplers_with_the_same_seed_give_the_same_batches():
    first = PromptSampler(size=10, batch_size=3, seed=7)
    second = PromptSampler(size=10, batch_size=3, seed=7)

    assert [first.next_batch() for _ in range(10)] == [second.next_batch() for _ in range(10)]


def test_different_seeds_give_different_orders():
    first = PromptSampler(size=50, batch_size=50, seed=0)
    second = PromptSampler(size=50, batch_size=50, seed=1)

    assert first.next_batch() != second.next_batch()


def test_every_index_appears_exactly_once_per_epoch_across_batch_boundaries():
    sampler = PromptSampler(size=7, batch_size=3, seed=3)

    indices = [index for _ in range(7) for index in sampler.next_batch()]  # 21 indices: 3 epochs

    epochs = [indices[0:7], indices[7:14], indices[14:21]]
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert (sampler.epoch, sampler.position) == (3, 0)


def test_batch_larger_than_the_dataset_spans_epochs():
    sampler = PromptSampler(size=3, batch_size=7, shuffle=False)

    assert sampler.next_batch() == [0, 1, 2, 0, 1, 2, 0]
    assert (sampler.epoch, sampler.position) == (2, 1)


def test_epoch_and_position_track_progress():
    sampler = PromptSampler(size=5, batch_size=2)

    sampler.next_batch()
    sampler.next_batch()
    assert sampler.state_dict() == {"epoch": 0, "position": 4, "seed": 0, "size": 5}
    sampler.next_batch()
    assert sampler.state_dict() == {"epoch": 1, "position": 1, "seed": 0, "size": 5}


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batches_before_checkpoint", [0, 1, 3, 4, 9])
def test_restored_sampler_continues_exactly_like_an_uninterrupted_one(shuffle, batches_before_checkpoint):
    uninterrupted = PromptSampler(size=8, batch_size=3, shuffle=shuffle, seed=11)
    interrupted = PromptSampler(size=8, batch_size=3, shuffle=shuffle, seed=11)
    for _ in range(batches_before_checkpoint):
        uninterrupted.next_batch()
        interrupted.next_batch()

    restored = PromptSampler(size=8, batch_size=3, shuffle=shuffle, seed=11)
    restored.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))

    assert [restored.next_batch() for _ in range(10)] == [uninterrupted.next_batch() for _ in range(10)]


def test_restored_sampler_may_change_batch_size():
    reference = PromptSampler(size=6, batch_size=1, seed=2)
    expected = [reference.next_batch()[0] for _ in range(12)]
    sampler = PromptSampler(size=6, batch_size=4, seed=2)
    sampler.next_batch()

    resized = PromptSampler(size=6, batch_size=2, seed=2)
    resized.load_state_dict(sampler.state_dict())

    assert [index for _ in range(4) for index in resized.next_batch()] == expected[4:12]


def test_loading_state_of_a_different_size_is_an_error():
    state = PromptSampler(size=8, batch_size=2).state_dict()

    with pytest.raises(ValueError, match="dataset of 8 rows, this one has 9"):
        PromptSampler(size=9, batch_size=2).load_state_dict(state)


def test_loading_state_with_a_different_seed_is_an_error():
    state = PromptSampler(size=8, batch_size=2, seed=1).state_dict()

    with pytest.raises(ValueError, match="seed 1, this sampler has seed 2"):
        PromptSampler(size=8, batch_size=2, seed=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"epoch": 0, "position": 0, "size": 8}, r"lacks \['seed'\]"),
        ({"epoch": 0, "position": 8, "seed": 0, "size": 8}, "out of range"),
        ({"epoch": -1, "position": 0, "seed": 0, "size": 8}, "out of range"),
    ],
)
def test_loading_an_incomplete_or_out_of_range_state_is_an_error(state, message):
    sampler = PromptSampler(size=8, batch_size=2)

    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict(state)
    assert sampler.state_dict() == {"epoch": 0, "position": 0, "seed": 0, "size": 8}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": 0, "batch_size": 1}, "non-empty dataset"),
        ({"size": 4, "batch_size": 0}, "batch_size must be positive"),
        ({"size": 4, "batch_size": 1, "seed": -1}, "seed must be non-negative"),
    ],
)
def test_invalid_sampler_arguments_are_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        PromptSampler(**arguments)


def test_sampler_over_a_loaded_dataset_yields_its_rows(tmp_path, tokenizer):
    config = DataConfig(files=[str(write_jsonl(tmp_path / "rows.jsonl", ROWS))], seed=5)
    dataset = PromptDataset.load(config, tokenizer)
    sampler = PromptSampler(len(dataset), batch_size=3, shuffle=config.shuffle, seed=config.seed)

    assert sorted(dataset[index].prompt for index in sampler.next_batch()) == sorted(row["prompt"] for row in ROWS)
