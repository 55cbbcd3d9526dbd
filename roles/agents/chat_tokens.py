"""The tokens a chat template puts around a multi-turn conversation, without
re-tokenizing what the model sampled.

`prompt_tokens` renders the episode's first messages with the generation prompt (and
the tools: through the template's own ``tools`` argument when it takes one, else in a
system message written by the run's `ToolCallFormat`). After a model turn,
`observation_tokens` gives the tokens that follow it: what the template writes after the
turn's content (its end-of-turn text, less the end-of-turn token the model sampled
itself), the observation's messages, and the next generation prompt. Only that text is
tokenized, on its own: the trajectory's earlier tokens stay as they were.

This needs a template whose rendering of a conversation is a prefix of its rendering of
any continuation (ChatML, Qwen, Llama 3 and SmolLM2 templates are). One that rewrites
earlier turns once later ones come (some strip earlier reasoning, for instance) is
refused with `TemplateError` rather than training on tokens the model never saw.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from roles.agents.tool_calls import ToolCallFormat

Message = dict[str, Any]


class TemplateError(ValueError):
    """The chat template cannot extend a conversation token in, token out."""


def takes_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template reads a ``tools`` variable."""
    template = tokenizer.chat_template
    return isinstance(template, str) and "tools" in template


def with_tools(messages: list[Message], tools: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
               format: ToolCallFormat) -> list[Message]:
    """`messages` for a template that does not take ``tools``: the format's description
    of the tools as the system message (joined to a system message already there)."""
    if not tools or takes_tools(tokenizer):
        return messages
    described = format.system_prompt(tools)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{described}"}, *messages[1:]]
    return [{"role": "system", "content": described}, *messages]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict[str, Any]],
           generation_prompt: bool) -> str:
    """The template's text for `messages` (tools passed when the template takes them)."""
    extra = {"tools": tools} if tools and takes_tools(tokenizer) else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **extra)
    assert isinstance(text, str)
    return text


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """`text`'s tokens as the template wrote it: no BOS or other tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict[str, Any]],
                  format: ToolCallFormat) -> list[int]:
    """The first messages' tokens with the generation prompt, the tools described."""
    return encode(tokenizer, render(tokenizer, with_tools(messages, tools, tokenizer, format), tools, True))


def observation_tokens(tokenizer: PreTrainedTokenizerBase, history: list[Message], turn_text: str,
                       ended_with_eos: bool, observation: list[Message], tools: list[dict[str, Any]],
                       format: ToolCallFormat) -> list[int]:
    """The tokens that follow a model turn: the rest of the turn's end as the template
    writes it, the observation's messages, and the next generation prompt.

    Args:
        history: the conversation before the turn (the first messages, then each turn
            and observation), as messages.
        turn_text: the turn's decoded text, special tokens left out.
        ended_with_eos: whether the turn's last sampled token is the tokenizer's
            end-of-sequence token (then that part of the template's end-of-turn text is
            in the trajectory already).
        observation: the environment's messages.

    Raises:
        TemplateError: the template renders the conversation differently once the
            observation follows, or does not end the turn where the model did.
    """
    messages = with_tools(history, tools, tokenizer, format) + [{"role": "assistant", "content": turn_text}]
    before = render(tokenizer, messages, tools, generation_prompt=False)
    after = render(tokenizer, messages + observation, tools, generation_prompt=True)
    if not after.startswith(before):
        raise TemplateError("the chat template renders earlier turns differently once an observation follows; "
                            "multi-turn training needs a template whose conversation is a prefix of its continuation")
    found = before.rfind(turn_text)
    if found < 0:
        raise TemplateError("the chat template rewrites a model turn's text (it does not appear as sampled); "
                            "multi-turn training needs a template that writes each turn as it was sampled")
    turn_end = found + len(turn_text)
    rest_of_turn = before[turn_end:]  # the template's end of the turn, e.g. "<|im_end|>\n"
    eos = tokenizer.eos_token
    if ended_with_eos and isinstance(eos, str) and eos:
        if rest_of_turn.startswith(eos):
            rest_of_turn = rest_of_turn[len(eos):]  # the model sampled it: the trajectory holds it already
        elif eos in rest_of_turn:
            raise TemplateError(f"the template ends a turn with {rest_of_turn!r}, which has text before the "
                                f"end-of-sequence token {eos!r} the model stopped at")
    return encode(tokenizer, rest_of_turn + after[len(before):])
