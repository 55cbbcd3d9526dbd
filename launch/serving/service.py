"""The model behind the inference service: its settings, loading it, and turning a
request body into token ids and sampling parameters within the model's limits.

A prompt plus its token budget must fit the context (``max_position_embeddings`` of
the model's config; vLLM's ``max_model_len``): a request over it is a 400 that gives
both numbers, and a request that leaves the budget out gets what the context leaves,
up to a default. Sampling settings that mean the same as another are sent as that one
(`sampling_params`): a near-zero temperature as greedy decoding, a ``top_k`` beyond the
vocabulary as none.

The model is a Hugging Face directory, or a peft LoRA adapter directory (``troupe export
--adapter`` writes one; `adapter_base` finds its base). The hf engine merges the adapter
into the base weights once at load (`load_adapter_model`), so it generates as fast as
the base; the vllm engine runs it through vLLM's LoRA API (roles.vllm_lora).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedTokenizerBase

from launch.serving.batcher import Batcher, GenerationFailed, QueueFullError, RequestBackend, Ticket
from launch.serving.schemas import ChatMessage, SamplingFields, ToolSchema
from roles.agents.chat_tokens import takes_tools, with_tools
from roles.agents.tool_calls import ToolCall, ToolCallFormat, tool_call_format
from roles.generation import SamplingParams
from roles.lora import ADAPTER_CONFIG_FILE, LoraSettings

log = logging.getLogger("troupe.serve")

MAX_CHARACTERS_PER_TOKEN = 64
"""No tokenizer we know has longer tokens: a prompt longer than this times the context
cannot fit, and is refused before tokenizing it would hold the event loop up."""
FALLBACK_MAX_NEW_TOKENS = 256
"""The default token budget of a model whose generation config sets none."""


class ServeConfig(BaseModel):
    """Settings of ``troupe serve``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: Path
    """A Hugging Face model directory, or a peft adapter directory (``adapter_config.json``)
    served on its base model (``troupe export [--adapter]`` writes either)."""
    base_model: Path | None = None
    """An adapter's base model directory; default: the one its ``adapter_config.json``
    names (``base_model_name_or_path``)."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 for every interface."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on; 0 picks a free one (the startup line names it)."""
    max_batch: int = Field(8, ge=1)
    """Most requests generated together (1 turns batching off)."""
    max_wait_ms: float = Field(0.0, ge=0)
    """Longest a request arriving at an idle server waits for others to join its batch
    (0: start at once; requests that queue while a batch runs join the next one anyway)."""
    max_queue: int = Field(64, ge=1)
    """Most requests waiting for a batch; more get 503 with Retry-After."""
    tool_format: str = "hermes"
    """How the model writes tool calls (roles.agents.tool_calls): ``hermes`` or ``json``;
    chat requests with ``tools`` get the calls back as OpenAI ``tool_calls``."""

    @field_validator("tool_format")
    @classmethod
    def _a_known_format(cls, name: str) -> str:
        tool_call_format(name)  # refuses an unknown name with the known ones
        return name
    engine: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers on CPU or GPU; ``vllm``: vLLM on a GPU (optional extra)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1`` ...; default: cuda when there is one."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: float32 on a CPU, bfloat16 on a GPU."""
    threads: int | None = Field(None, ge=1)
    """torch threads on a CPU (default: torch's choice, one per core)."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Longest a request may take before it gets 504 (a stream: between two chunks)."""
    served_model_name: str | None = None
    """The model name the OpenAI endpoints report; default: the directory's name."""
    graceful_shutdown_s: float = Field(30.0, ge=0)
    """On SIGINT/SIGTERM, how long requests in flight get to finish."""


class ServingError(Exception):
    """A request the service answers with an error status instead of a response."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class LoadedModel:
    backend: RequestBackend
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    """Prompt plus generated tokens, at most."""
    default_max_new_tokens: int
    name: str
    device: str
    vocabulary_size: int
    """Tokens the tokenizer knows: a ``top_k`` of at least this keeps every token."""


def load_model(config: ServeConfig) -> LoadedModel:
    """Loads the model and tokenizer of ``config.model`` for the configured engine (an
    adapter directory: its base with the adapter)."""
    import torch

    from roles.generation import HFBackend, VllmBackend, limit_cpu_threads, load_causal_lm

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = config.dtype or ("float32" if device == "cpu" else "bfloat16")
    name = config.served_model_name or config.model.resolve().name
    base = adapter_base(config.model, config.base_model)
    if config.engine == "vllm":
        if not device.startswith("cuda"):
            raise ValueError("the vllm engine runs on a GPU: drop --engine vllm to serve on the CPU")
        if base is None:
            backend = VllmBackend(config.model, dtype=dtype)
        else:
            backend = VllmBackend(base, dtype=dtype, lora=_adapter_settings(config.model))
            backend.use_adapter(config.model)
        tokenizer = backend.llm.get_tokenizer()
        context_length = int(backend.llm.llm_engine.model_config.max_model_len)
        configured = _generation_config_max_new_tokens(base or config.model)
    else:
        limit_cpu_threads(device, config.threads)
        if base is None:
            model, tokenizer = load_causal_lm(config.model, dtype, device)
        else:
            model, tokenizer = load_adapter_model(config.model, base, dtype, device)
        context_length = _context_length(model.config)
        backend = HFBackend(model, tokenizer, device, micro_batch=config.max_batch)
        configured = getattr(model.generation_config, "max_new_tokens", None)
    return LoadedModel(backend, tokenizer, context_length, int(configured or FALLBACK_MAX_NEW_TOKENS), name, device,
                       len(tokenizer))


def adapter_base(directory: Path, base_model: Path | None = None) -> Path | None:
    """The base model directory of a peft adapter directory: `base_model` when given,
    else the one its ``adapter_config.json`` names (``base_model_name_or_path``; a
    relative path is taken from the working directory, as peft takes it). None when
    `directory` is not an adapter directory (it has no ``adapter_config.json``).

    Raises:
        ValueError: the base is not a local Hugging Face model directory (the message
            names it and how to give another), or `base_model` is given for a directory
            that is not an adapter.
    """
    config_path = directory / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        if base_model is not None:
            raise ValueError(f"--base-model is for a peft adapter directory; {directory} has no {ADAPTER_CONFIG_FILE}: "
                             "drop --base-model to serve it as a model")
        return None
    given = base_model or json.loads(config_path.read_text()).get("base_model_name_or_path")
    source = "--base-model" if base_model is not None else f"base_model_name_or_path in {config_path}"
    if not given:
        raise ValueError(f"{config_path} names no base model (base_model_name_or_path is empty): give the base model "
                         "directory with --base-model DIR")
    base = Path(given).expanduser().resolve()
    if not (base / "config.json").is_file():
        problem = "does not exist" if not base.exists() else "is not a Hugging Face model directory (no config.json)"
        raise ValueError(f"the adapter's base model {base} ({source}) {problem}: give the local directory of the model "
                         "the adapter was trained on with --base-model DIR")
    return base


def load_adapter_model(adapter: Path, base: Path, dtype: str, device: str) -> tuple[Any, PreTrainedTokenizerBase]:
    """The base model with the peft adapter in `adapter` merged into its weights (a
    plain transformers model, in eval mode), and the base's tokenizer."""
    from peft import PeftModel

    from roles.generation import load_causal_lm

    model, tokenizer = load_causal_lm(base, dtype, device)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval(), tokenizer


def _adapter_settings(adapter: Path) -> LoraSettings:
    """The `roles.lora.LoraSettings` of an adapter directory, as far as vLLM needs them (its rank)."""
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())
    return LoraSettings(r=config["r"], alpha=config.get("lora_alpha", config["r"]))


def _context_length(model_config: object) -> int:
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("the model config names no context length (max_position_embeddings)")


def _generation_config_max_new_tokens(path: Path) -> int | None:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path, local_files_only=True).max_new_tokens
    except OSError:  # the directory has no generation_config.json: use the fallback
        return None


def sampling_params(fields: SamplingFields, max_new_tokens: int, n: int, vocabulary_size: int) -> SamplingParams:
    """The generation's parameters for a request's sampling fields.

    A temperature below ``GREEDY_BELOW_TEMPERATURE`` decodes greedily (``top_k=1``; the
    temperature then changes nothing, so 1), and a ``top_k`` of at least
    ``vocabulary_size`` is off (0), as vLLM takes it: it would keep every token.
    """
    if fields.decodes_greedily():
        temperature, top_k = 1.0, 1
    else:
        temperature, top_k = fields.temperature, (fields.top_k if fields.top_k < vocabulary_size else 0)
    return SamplingParams(
        n=n, temperature=temperature, top_k=top_k, top_p=fields.top_p, max_new_tokens=max_new_tokens,
        stop=fields.stop_strings(), seed=fields.seed, ignore_eos=fields.ignore_eos,
    )


class ModelService:
    """A loaded model and its batcher: request bodies in, tickets out."""

    def __init__(self, model: LoadedModel, batcher: Batcher, tool_format: ToolCallFormat | None = None) -> None:
        self.model = model
        self.batcher = batcher
        self.tool_format = tool_format or tool_call_format("hermes")

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids (with the tokenizer's special tokens, as for any completion)."""
        self._refuse_huge(len(prompt))
        return list(self.model.tokenizer(prompt).input_ids)

    def encode_chat(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSchema] | None = None) -> list[int]:
        """The messages through the tokenizer's chat template, ready for the assistant's
        turn; with `tools`, described to the model (roles.agents.chat_tokens.with_tools),
        and earlier calls written back in the server's tool format."""
        tokenizer = self.model.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ServingError(400, "the model's tokenizer has no chat template: use /v1/completions with a plain prompt",
                               "messages")
        self._refuse_huge(sum(len(message.text()) for message in messages))
        schemas = [tool.model_dump(exclude_none=True) for tool in tools or []]
        chat = with_tools([self._message(message) for message in messages], schemas, tokenizer, self.tool_format)
        encoded = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                **({"tools": schemas} if schemas and takes_tools(tokenizer) else {}))
        # transformers 5 returns a BatchEncoding, earlier versions the ids themselves
        return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)

    def _message(self, message: ChatMessage) -> dict[str, Any]:
        """A request's message as the chat template reads it; an assistant's calls as the
        model writes them (the tool format's text after its content)."""
        text = message.text()
        if message.tool_calls:
            calls = []
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError:
                    raise ServingError(400, f"the arguments of tool call {call.id!r} are not JSON", "messages") from None
                calls.append(ToolCall(call.function.name, arguments if isinstance(arguments, dict) else {}))
            text = "\n".join(part for part in (text, self.tool_format.render(calls)) if part)
        chat: dict[str, Any] = {"role": message.role, "content": text}
        if message.name is not None:
            chat["name"] = message.name
        return chat

    def sampling(self, fields: SamplingFields, prompt_ids: list[int], max_new_tokens: int | None,
                 budget_name: str, n: int = 1) -> SamplingParams:
        """Sampling parameters for a request whose prompt has been encoded.

        Raises:
            ServingError: 400 when the prompt is empty or, with ``max_new_tokens``, does
                not fit the context; the message gives the numbers and the fix.
        """
        context = self.model.context_length
        prompt_tokens = len(prompt_ids)
        if prompt_tokens == 0:
            raise ServingError(400, "the prompt encodes to no tokens", "prompt")
        room = context - prompt_tokens
        if max_new_tokens is None:
            if room < 1:
                raise ServingError(400, f"the prompt is {prompt_tokens} tokens and the model's context is {context} "
                                        f"tokens (max_position_embeddings), which leaves no room to generate: "
                                        f"shorten the prompt to at most {context - 1} tokens", "prompt")
            max_new_tokens = min(self.model.default_max_new_tokens, room)
        elif max_new_tokens > room:
            raise ServingError(400, f"the prompt ({prompt_tokens} tokens) plus {budget_name} ({max_new_tokens}) is "
                                    f"{prompt_tokens + max_new_tokens} tokens, over the model's context of {context} "
                                    f"tokens (max_position_embeddings): shorten the prompt or set {budget_name} to at "
                                    f"most {max(room, 0)}", budget_name if room >= 1 else "prompt")
        return sampling_params(fields, max_new_tokens, n, self.model.vocabulary_size)

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, stream: bool, endpoint: str,
               received_at: float) -> Ticket:
        """Queues the request; a full queue is a 503 with Retry-After."""
        try:
            return self.batcher.submit(prompt_ids, params, stream=stream, endpoint=endpoint, received_at=received_at)
        except QueueFullError as error:
            raise ServingError(503, str(error), headers={"Retry-After": str(error.retry_after_s)}) from None
        except GenerationFailed as error:
            raise ServingError(503, str(error), headers={"Retry-After": "5"}) from None

    def _refuse_huge(self, characters: int) -> None:
        limit = MAX_CHARACTERS_PER_TOKEN * self.model.context_length
        if characters > limit:
            raise ServingError(400, f"the prompt is {characters} characters; the model's context is "
                                    f"{self.model.context_length} tokens (max_position_embeddings), and no prompt over "
                                    f"{limit} characters fits it", "prompt")
