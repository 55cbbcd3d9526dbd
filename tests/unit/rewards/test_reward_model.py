"""The reward model scores pairs with a sequence-classification model loaded from disk.

The tests build a tiny Llama classifier and a word-level tokenizer, save them
with save_pretrained, and load them through the real loading code. (Llama, not
Qwen2: for a qwen2 checkpoint, transformers 5's AutoTokenizer swaps in its own
Qwen2 pre-tokenizer and would ignore the word-level one built here.) Llama's
rotary positions make its scores immune to left padding, so the padding-side test
uses a tiny GPT-2, whose learned absolute positions are not.
"""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from roles.rewards import RewardModel, RewardModelRewardConfig, RewardResult, RewardRouter, RewardsConfig

WORDS = "the answer is a an of to and what plus minus equals zero one two three four five six seven eight nine ten"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[EOS]"]
VOCABULARY = SPECIAL_TOKENS + ["<", ">", "user", "assistant", "?", ".", "=", "+"] + WORDS.split() + list("0123456789")
CHAT_TEMPLATE = "{% for message in messages %}< {{ message['role'] }} > {{ message['content'] }} {% endfor %}[EOS]"
PROMPTS = ["what is two plus two ?", "one plus one", "what is the answer ?", "three", "nine minus four equals"]
RESPONSES = [" four", " two .", " the answer is 4 2 and 7 .", " plus three equals six", " five"]


def build_tokenizer(**special_tokens):
    tokenizer = Tokenizer(models.WordLevel({token: index for index, token in enumerate(VOCABULARY)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", **special_tokens)


def save_tiny_classifier(directory, num_labels, padding_side="left", chat_template=None):
    torch.manual_seed(num_labels)
    config = LlamaConfig(
        vocab_size=len(VOCABULARY),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
        num_labels=num_labels,
        pad_token_id=None,  # the loader must take it from the tokenizer
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    # saved with left padding, which would shift positions if the loader kept it
    tokenizer = build_tokenizer(pad_token="[PAD]", eos_token="[EOS]", padding_side=padding_side)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def absolute_position_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    eos_id = VOCABULARY.index("[EOS]")
    config = GPT2Config(
        vocab_size=len(VOCABULARY),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        initializer_range=0.3,
        num_labels=1,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(directory)
    build_tokenizer(pad_token="[PAD]", eos_token="[EOS]", padding_side="left").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def single_label_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("single_label"), num_labels=1, chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def three_label_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("three_labels"), num_labels=3)


def direct_logits(directory, text):
    """Logits of one unpadded sequence from a plain Hugging Face forward pass: [num_labels]."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def test_scores_equal_a_direct_forward_pass_of_each_pair(single_label_dir):
    reward_model = RewardModel.from_directory(single_label_dir)

    scores = reward_model.score_batch(PROMPTS, RESPONSES)

    expected = [direct_logits(single_label_dir, prompt + response)[0].item() for prompt, response in zip(PROMPTS, RESPONSES)]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert len(set(round(score, 4) for score in scores)) == len(scores), "scores should tell the pairs apart"


def test_batched_scores_equal_unbatched_scores_across_batch_boundaries(single_label_dir):
    batched = RewardModel.from_directory(single_label_dir, batch_size=2).score_batch(PROMPTS, RESPONSES)
    one_by_one = [RewardModel.from_directory(single_label_dir)(prompt, response).score for prompt, response in zip(PROMPTS, RESPONSES)]

    torch.testing.assert_close(torch.tensor(batched), torch.tensor(one_by_one), rtol=1e-5, atol=1e-5)


def test_absolute_position_model_scores_batched_as_unbatched_despite_a_left_padding_tokenizer(absolute_position_dir):
    reward_model = RewardModel.from_directory(absolute_position_dir, batch_size=len(PROMPTS))

    batched = reward_model.score_batch(PROMPTS, RESPONSES)

    expected = [direct_logits(absolute_position_dir, prompt + response)[0].item() for prompt, response in zip(PROMPTS, RESPONSES)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_loader_pads_on_the_right_and_tells_the_model_its_pad_token(single_label_dir):
    assert AutoTokenizer.from_pretrained(single_label_dir).padding_side == "left"

    reward_model = RewardModel.from_directory(single_label_dir)

    assert reward_model.tokenizer.padding_side == "right"
    assert reward_model.model.config.pad_token_id == reward_model.tokenizer.convert_tokens_to_ids("[PAD]")


def test_per_item_call_returns_a_reward_result_and_ignores_the_ground_truth(single_label_dir):
    reward_model = RewardModel.from_directory(single_label_dir)

    result = reward_model(PROMPTS[0], RESPONSES[0], ground_truth="ignored", data_source="chat")

    assert isinstance(result, RewardResult)
    assert result.score == pytest.approx(reward_model.score_batch(PROMPTS[:1], RESPONSES[:1])[0])
    assert [r.score for r in reward_model.score_many(PROMPTS, RESPONSES, [None] * 5)] == reward_model.score_batch(PROMPTS, RESPONSES)


def test_chat_template_scores_the_templated_conversation(single_label_dir):
    reward_model = RewardModel.from_directory(single_label_dir, use_chat_template=True)

    text = reward_model.format_text("one plus one", "two")
    score = reward_model.score_batch(["one plus one"], ["two"])[0]

    assert text == "< user > one plus one < assistant > two [EOS]"
    assert score == pytest.approx(direct_logits(single_label_dir, text)[0].item(), abs=1e-5)


def test_single_label_probability_is_the_sigmoid_of_the_logit(single_label_dir):
    logits = RewardModel.from_directory(single_label_dir).score_batch(PROMPTS, RESPONSES)
    probabilities = RewardModel.from_directory(single_label_dir, output="probability").score_batch(PROMPTS, RESPONSES)

    torch.testing.assert_close(torch.tensor(probabilities), torch.sigmoid(torch.tensor(logits)))


def test_multi_label_model_scores_the_chosen_label(three_label_dir):
    logits = RewardModel.from_directory(three_label_dir, label_index=2).score_batch(PROMPTS, RESPONSES)
    probabilities = RewardModel.from_directory(three_label_dir, label_index=2, output="probability").score_batch(PROMPTS, RESPONSES)

    expected = torch.stack([direct_logits(three_label_dir, p + r) for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(torch.tensor(logits), expected[:, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(probabilities), torch.softmax(expected, dim=-1)[:, 2], rtol=1e-5, atol=1e-5)


def test_multi_label_model_without_label_index_is_rejected(three_label_dir):
    with pytest.raises(ValueError, match="has 3 labels; set label_index"):
        RewardModel.from_directory(three_label_dir)
    with pytest.raises(ValueError, match="label_index 3 is out of range"):
        RewardModel.from_directory(three_label_dir, label_index=3)


def test_truncation_keeps_the_end_of_long_sequences(single_label_dir):
    reward_model = RewardModel.from_directory(single_label_dir, max_length=4)
    prompt, response = "one two three four five", " six seven"

    score = reward_model.score_batch([prompt], [response])[0]

    assert score == pytest.approx(direct_logits(single_label_dir, "four five six seven")[0].item(), abs=1e-5)


def test_tokenizer_without_pad_token_pads_with_its_end_of_sequence_token(single_label_dir):
    model = AutoModelForSequenceClassification.from_pretrained(single_label_dir)
    reward_model = RewardModel(model, build_tokenizer(eos_token="[EOS]"))

    assert reward_model.tokenizer.pad_token == "[EOS]"
    assert len(reward_model.score_batch(PROMPTS, RESPONSES)) == len(PROMPTS)


def test_chat_template_option_needs_a_template(three_label_dir):
    with pytest.raises(ValueError, match="no chat_template"):
        RewardModel.from_directory(three_label_dir, label_index=0, use_chat_template=True)


def test_missing_directory_is_reported_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        RewardModel.from_directory(tmp_path / "absent")


def test_mismatched_prompt_and_response_counts_are_rejected(single_label_dir):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        RewardModel.from_directory(single_label_dir).score_batch(["a", "b"], ["c"])


def test_router_loads_a_shared_reward_model_once_and_batches_its_rows(single_label_dir):
    spec = {"type": "reward_model", "path": str(single_label_dir), "batch_size": 2}
    config = RewardsConfig.model_validate(
        {"by_data_source": {"chat": spec, "helpfulness": spec}, "default": {"type": "arithmetic"}}
    )
    router = RewardRouter.from_config(config)

    results = router.score_batch(
        ["12+7=", PROMPTS[0], PROMPTS[1]], ["19", RESPONSES[0], RESPONSES[1]], [19, None, None], ["arithmetic", "chat", "helpfulness"]
    )

    assert router.function_for("chat") is router.function_for("helpfulness")
    assert isinstance(RewardModelRewardConfig.model_validate(spec), RewardModelRewardConfig)
    expected = RewardModel.from_directory(single_label_dir).score_batch(PROMPTS[:2], RESPONSES[:2])
    assert [result.score for result in results] == pytest.approx([1.0, *expected], abs=1e-5)
