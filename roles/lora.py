"""LoRA adapters: the settings, the peft model, and the one naming of adapter tensors.

A trainer with ``lora:`` in its config wraps its model with `peft` (`wrap_model`): the
base weights are frozen and only the adapter's A and B matrices train, so AdamW keeps
state for them alone. Everything that moves an adapter between processes names its
tensors one way, the *adapter name*: the base model's module name plus
``lora_A.weight`` or ``lora_B.weight``::

    model.layers.0.self_attn.q_proj.lora_A.weight    # [r, in_features]
    model.layers.0.self_attn.q_proj.lora_B.weight    # [out_features, r]

The weight channel sends these (the trainer's publisher maps peft's state-dict names to
them with `channel_name`, dropping every base weight); generators apply them
(roles.lora_loading); a peft adapter directory stores them under ``base_model.model.``
+ the adapter name (`adapter_file_key`), which is what ``peft`` and vLLM read.

Which modules carry an adapter is peft's decision (``all-linear`` resolves to every
linear layer but the output head); `adapter_shapes` asks peft on a model built on the
meta device, so a generator knows the names and shapes to expect without loading the
trainer's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

PEFT_PREFIX = "base_model.model."
"""What peft puts in front of the base model's names (state dicts and adapter files)."""
ADAPTER_NAME = "default"
"""peft's name for the single adapter a troupe model carries."""
LORA_MATRICES = ("lora_A", "lora_B")


class LoraSettings(BaseModel):
    """A LoRA adapter: its rank, scaling, dropout and the modules it adapts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """The adapter's rank."""
    alpha: float = Field(32.0, gt=0)
    """The scaling numerator: an adapter adds ``alpha / r * B @ A`` to a weight."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input while training (generators never apply it)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (``[q_proj, v_proj]`` matches every module whose name ends
    so), or ``all-linear``: every linear layer but the output head."""

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def peft_config(self, inference: bool = False) -> object:
        """The `peft.LoraConfig` of these settings."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=0.0 if inference else self.dropout,
                          target_modules=self.target_modules, bias="none", inference_mode=inference,
                          task_type="CAUSAL_LM")


def wrap_model(model: torch.nn.Module, settings: LoraSettings, inference: bool = False) -> torch.nn.Module:
    """`model` with a fresh adapter (B = 0: the wrapped model computes what `model` did);
    only the adapter's parameters require gradients."""
    from peft import get_peft_model

    return get_peft_model(model, settings.peft_config(inference))  # type: ignore[arg-type]


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft model (the model itself when it has no adapter)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def channel_name(state_name: str) -> str | None:
    """A peft model's state-dict name -> its adapter name, or None for a base weight.

    ``base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight`` ->
    ``model.layers.0.mlp.up_proj.lora_B.weight``
    """
    for matrix in LORA_MATRICES:
        marker = f".{matrix}.{ADAPTER_NAME}."
        if marker in state_name:
            name = state_name.replace(marker, f".{matrix}.")
            return name.removeprefix(PEFT_PREFIX)
    return None


def adapter_file_key(name: str) -> str:
    """An adapter name -> its key in a peft adapter file (``adapter_model.safetensors``)."""
    return PEFT_PREFIX + name


def adapter_name_of_file_key(key: str) -> str:
    """A key of a peft adapter file -> the adapter name."""
    if not key.startswith(PEFT_PREFIX):
        raise ValueError(f"{key!r} is not a peft adapter key (they start with {PEFT_PREFIX!r})")
    return key.removeprefix(PEFT_PREFIX)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a (single-process) peft model, by adapter name."""
    named = {}
    for state_name, tensor in model.state_dict().items():
        name = channel_name(state_name)
        if name is not None:
            named[name] = tensor
    return named


def adapted_module(name: str) -> tuple[str, str]:
    """An adapter name -> (the adapted module's name, ``lora_A`` or ``lora_B``)."""
    module, _, rest = name.rpartition(".lora_")
    if not module or rest not in ("A.weight", "B.weight"):
        raise ValueError(f"{name!r} is not an adapter name (MODULE.lora_A.weight or MODULE.lora_B.weight)")
    return module, "lora_" + rest[0]


def adapter_shapes(config: object, settings: LoraSettings) -> dict[str, tuple[int, ...]]:
    """The adapter names and shapes peft gives a model of this transformers `config`
    (built on the meta device: no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    wrapped = wrap_model(model, settings, inference=True)
    return {name: tuple(tensor.shape) for name, tensor in adapter_state(wrapped).items()}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries of the parameters that train (with an adapter: the adapter
    alone, under peft's names). What a LoRA trainer's checkpoint holds as its model."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: tensor for name, tensor in model.state_dict().items() if name in trainable}


def adapter_directory_config(settings: LoraSettings, base_model_path: str) -> dict[str, object]:
    """The ``adapter_config.json`` of a peft adapter directory for these settings."""
    config = settings.peft_config(inference=True)
    config.base_model_name_or_path = base_model_path  # type: ignore[attr-defined]
    return config.to_dict()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- adapter directories
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_target_modules(names: Iterable[str]) -> list[str]:
    """The last parts of the module names an adapter's tensors adapt (``q_proj``,
    ``down_proj`` ...), sorted: ``target_modules`` resolved, as an adapter directory lists
    them (peft and vLLM both match a module by the end of its name)."""
    return sorted({adapted_module(name)[0].rpartition(".")[2] for name in names})


def write_adapter_directory(directory: Path | str, named: Mapping[str, torch.Tensor], settings: LoraSettings,
                            base_model_path: Path | str) -> Path:
    """Writes a peft adapter directory of adapter-named tensors: ``adapter_config.json``
    (`settings`, the resolved target modules, `base_model_path`) and
    ``adapter_model.safetensors`` (each tensor under `adapter_file_key`), what
    ``peft.PeftModel.from_pretrained`` and vLLM's LoRA loader read.

    Args:
        named: the whole adapter, ``lora_A`` [r, in] and ``lora_B`` [out, r] of every
            adapted module (a generator's received version, or `adapter_state`).
    """
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = adapter_directory_config(settings, str(base_model_path))
    config["target_modules"] = adapter_target_modules(named)
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    tensors = {adapter_file_key(name): tensor.detach().to("cpu").contiguous() for name, tensor in named.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return directory

