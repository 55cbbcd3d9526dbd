"""The default generator-side loader: received tensors into a torch model by state-dict name.

Other loaders (tensor-parallel slices, vLLM's ``load_weights``) live with the roles that
use them; any callable taking ``(name, full tensor)`` pairs will do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

Named = Iterable[tuple[str, torch.Tensor]]


class ModelLoader:
    """Loads received tensors into a torch model by state-dict name.

    By default it copies into the model's parameters and buffers (casting to their
    dtype and device). With ``adopt=True`` the parameters become views of the received
    buckets instead: no copy, so the generator's pause is a pointer swap. The receiver
    then keeps two sets of staging buckets and never receives into the set the model
    is using. A tensor whose dtype or device differs from the model's is still copied.

    Attributes:
        expected: the names and shapes it accepts (for `WeightReceiver`'s check).
    """

    def __init__(self, model: torch.nn.Module, adopt: bool = False) -> None:
        self.model = model
        self.adopt = adopt
        self.targets = model.state_dict(keep_vars=True)
        self.expected = {name: tuple(tensor.shape) for name, tensor in self.targets.items()}

    @property
    def adopts_buffers(self) -> bool:
        return self.adopt

    def __call__(self, named: Named) -> None:
        with torch.no_grad():
            for name, tensor in named:
                target = self.targets[name]
                if self.adopt and tensor.dtype == target.dtype and tensor.device == target.device:
                    self._rebind(name, target, tensor)
                else:
                    target.copy_(tensor)

    def _rebind(self, name: str, target: torch.Tensor, tensor: torch.Tensor) -> None:
        if isinstance(target, torch.nn.Parameter):
            target.data = tensor  # the Parameter object stays: tied weights stay tied
            return
        owner, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(owner)
        module._buffers[leaf] = tensor
        self.targets[name] = tensor
