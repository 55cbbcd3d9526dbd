"""A character-level tokenizer with ChatML's special tokens, for token layouts that can
be written out by hand: every character is one token, ``<|im_start|>`` and
``<|im_end|>`` (the end-of-sequence token) one each."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""ChatML without tool support (as SmolLM2's template): tools go in a system message."""
CHATML_WITH_TOOLS = ("{% if tools %}<|im_start|>system\ntools:{% for tool in tools %}{{ tool['function']['name'] }}"
                     "{% endfor %}<|im_end|>\n{% endif %}" + CHATML)
"""ChatML that reads ``tools`` itself, as Qwen's templates do."""
CHARACTERS = string.printable


def chat_tokenizer(template: str = CHATML) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<unk>": 3}
    vocab.update({character: len(vocab) + index for index, character in enumerate(CHARACTERS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = template
    return tokenizer


def characters(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """`text`'s tokens written out one by one: special tokens by their ids, every other
    character by its own (the hand-built side of a layout test)."""
    ids, position = [], 0
    specials = {"<|im_start|>": 1, "<|im_end|>": 2}
    while position < len(text):
        special = next((name for name in specials if text.startswith(name, position)), None)
        if special is not None:
            ids.append(specials[special])
            position += len(special)
        else:
            ids.append(tokenizer.convert_tokens_to_ids(text[position]))
            position += 1
    return ids
