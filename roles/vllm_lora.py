"""LoRA adapters in the vLLM backend: each version as a peft directory, loaded through
vLLM's LoRA API.

vLLM computes an adapter beside the base weights with its own kernels (punica), for
requests that name it with a ``LoRARequest``, and its public API reads an adapter from a
peft directory (a ``LoRARequest`` holds a path, not tensors). So a vLLM generator whose
trainer trains a LoRA adapter (roles.lora) keeps the base weights it started with and,
for each version the weight channel delivers:

1. writes the received tensors as a peft adapter directory (`AdapterVersions`: one
   folder per version under a temporary folder the generator owns; a few megabytes);
2. registers it with the engine under a fresh name and id (`VllmBackend.use_adapter`:
   vLLM tells adapters apart by name and caches them by id, so reusing either would
   serve the old weights), and drops the previous one from the engine and the disk;
3. samples every later request with that adapter (``lora_request``).

The engine is built for it with ``enable_lora``, ``max_loras=1`` (one adapter at a
time) and ``max_lora_rank``, which vLLM takes from a fixed list (`vllm_max_lora_rank`).
Nothing here imports vLLM, so it tests without it.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from roles.lora import LoraSettings, adapter_shapes, write_adapter_directory

if TYPE_CHECKING:
    from roles.vllm_backend import VllmBackend

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``max_lora_rank`` (its ``vllm.config.lora.MaxLoRARanks``)."""

Named = Iterable[tuple[str, torch.Tensor]]


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of `rank`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"lora.r is {rank}; vLLM serves adapters of rank at most {VLLM_MAX_LORA_RANKS[-1]}: "
                     "lower lora.r, or use the hf backend")


def lora_engine_arguments(settings: LoraSettings) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments that let it run one adapter of `settings` at a time."""
    return {"enable_lora": True, "max_loras": 1, "max_lora_rank": vllm_max_lora_rank(settings.r)}


class AdapterVersions:
    """Peft adapter directories, one per version, in a temporary folder of their own
    (removed with this object, or at exit).

    Args:
        settings: the adapter's settings (its ``adapter_config.json``).
        base_model_path: the base model directory the adapters apply to.
        root: where the temporary folder goes (default: the system's temporary folder).
    """

    def __init__(self, settings: LoraSettings, base_model_path: Path | str, root: Path | str | None = None) -> None:
        self.settings = settings
        self.base_model_path = Path(base_model_path).resolve()
        self.folder = Path(tempfile.mkdtemp(prefix="troupe-lora-", dir=root))
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._writes = itertools.count(1)

    def write(self, named: Named, version: int | None = None) -> Path:
        """Writes one version (the whole adapter, by adapter name) to a new directory,
        named by a count of writes (and `version`, when given, for a reader)."""
        label = f"adapter-{next(self._writes)}" + (f"-v{version}" if version is not None else "")
        return write_adapter_directory(self.folder / label, dict(named), self.settings, self.base_model_path)

    def keep_only(self, directory: Path) -> None:
        """Removes every version but `directory` (the one the engine now uses)."""
        for other in self.folder.iterdir():
            if other != directory:
                shutil.rmtree(other)

    def versions(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def close(self) -> None:
        self._remove_folder()


class VllmAdapterLoader:
    """The weight channel's loader for a vLLM generator with LoRA (a backend built with
    ``lora``): hands each received adapter version to `VllmBackend.load_adapter`.

    Attributes:
        expected: the adapter names and shapes it accepts (`WeightReceiver`'s check):
            the adapter peft gives the backend's model for the backend's settings.
    """

    def __init__(self, backend: VllmBackend) -> None:
        from transformers import AutoConfig

        if backend.lora is None:
            raise ValueError("VllmAdapterLoader needs a VllmBackend built with lora settings")
        self.backend = backend
        self.expected = adapter_shapes(AutoConfig.from_pretrained(backend.path, local_files_only=True), backend.lora)
        self._loads = itertools.count(1)

    def __call__(self, named: Named) -> None:
        received = dict(named)
        unknown = sorted(set(received) - set(self.expected))
        if unknown:
            raise KeyError(f"{unknown[0]} is not a tensor of this generator's adapter ({len(unknown)} such)")
        missing = sorted(set(self.expected) - set(received))
        if missing:  # a version is the whole adapter: vLLM would take the absent matrices as zero
            raise ValueError(f"the adapter version lacks {len(missing)} tensor(s), e.g. {missing[0]}")
        self.backend.load_adapter(received.items(), version=next(self._loads))
