"""Generator-side loaders for adapter-only weight sync (see roles.lora).

A generator whose trainer trains a LoRA adapter receives only the adapter's tensors
each version; its base weights are the ones it loaded from the model directory, which
the trainer never changes. Two ways to use them, chosen by the generator's
``lora_mode`` (benchmarks/lora.py measures both):

* `MergingLoader` (``merge``): each adapted weight is rewritten as
  ``W = W_base + alpha / r * B @ A`` from a copy of its base value, so generation runs
  the plain model at full speed. Merging always starts from the base copy, never from
  the previous merge, so version N+1 after version N is bit-identical to a fresh merge
  of N+1 (no drift). Costs one copy of the adapted weights.
* `AdapterLoader` (``unmerged``): the model is wrapped with peft and the adapter's A and
  B are copied into it; the forward computes the adapter beside each weight (slower
  generation, no extra copy of the weights, a near-instant load).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from roles.lora import LoraSettings, adapted_module, adapter_shapes, adapter_state, wrap_model

Named = Iterable[tuple[str, torch.Tensor]]


class MergingLoader:
    """Merges each received adapter into the weights it adapts, from their base values.

    Attributes:
        expected: the adapter names and shapes it accepts (`WeightReceiver`'s check).
    """

    def __init__(self, model: torch.nn.Module, settings: LoraSettings) -> None:
        self.expected = adapter_shapes(model.config, settings)  # type: ignore[attr-defined]
        self.scaling = settings.scaling
        modules = sorted({adapted_module(name)[0] for name in self.expected})
        self.weights = {module: model.get_submodule(module).weight for module in modules}  # type: ignore[union-attr]
        self.base = {module: weight.detach().clone() for module, weight in self.weights.items()}
        """The base value of every adapted weight (what a merge starts from)."""

    def __call__(self, named: Named) -> None:
        pending: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in named:
            module, matrix = adapted_module(name)
            if module not in self.weights:
                raise KeyError(f"{name}: this generator's model has no adapted module {module}")
            pending.setdefault(module, {})[matrix] = tensor
        missing = [module for module in self.weights if set(pending.get(module, ())) != {"lora_A", "lora_B"}]
        if missing:  # a version is the whole adapter: half of one would merge wrong
            raise ValueError(f"the adapter version lacks lora_A or lora_B of {len(missing)} module(s), e.g. {missing[0]}")
        with torch.no_grad(), one_thread():
            for module, parts in pending.items():
                merge_into(self.weights[module], self.base[module], parts["lora_A"], parts["lora_B"], self.scaling)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block. A merge is ~200 small memory-bound
    kernels: on a busy 2-core machine waking a second OpenMP thread for each costs
    more than the kernel (SmolLM2-135M's r=16 merge: 2.5-3.3 s with 2 threads, 0.08 s
    with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def merge_into(weight: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               scaling: float) -> None:
    """``weight = base + scaling * B @ A``, computed in float32 (one fused pass, written in
    place, when the weight is float32) and stored in `weight`'s dtype.

    Args:
        weight: [out, in] the model's weight, overwritten.
        base: [out, in] its value without the adapter.
        lora_a: [r, in].
        lora_b: [out, r].
    """
    lora_a = lora_a.to(base.device, torch.float32)
    lora_b = lora_b.to(base.device, torch.float32)
    if weight.dtype == base.dtype == torch.float32:
        torch.addmm(base, lora_b, lora_a, alpha=scaling, out=weight)
    else:
        weight.copy_(torch.addmm(base.float(), lora_b, lora_a, alpha=scaling))


class AdapterLoader:
    """Runs the adapter unmerged: wraps the model with peft (inference mode) and copies
    each received A and B into it. `model` is the wrapped model to generate with."""

    def __init__(self, model: torch.nn.Module, settings: LoraSettings) -> None:
        self.model = wrap_model(model, settings, inference=True)
        self.targets = adapter_state(self.model)
        self.expected = {name: tuple(tensor.shape) for name, tensor in self.targets.items()}

    def __call__(self, named: Named) -> None:
        with torch.no_grad():
            for name, tensor in named:
                target = self.targets.get(name)
                if target is None:
                    raise KeyError(f"{name} is not a tensor of this generator's adapter")
                target.copy_(tensor)
