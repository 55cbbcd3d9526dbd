"""The settings every role that loads a model shares: which model, in what dtype, on
which device, with how many CPU threads.

Role configs inherit `ModelSettings` (the trainer, generator, reference and critic) or
its part without a model directory, `ModelPlacement` (the reward model, which names its
directory ``path``). The fields stay flat in each role's ``config:`` block, so topology
files write ``dtype: bfloat16`` where they always did; what changes is that a wrong
dtype or device is refused by ``troupe validate`` with its field path, before any
process starts, instead of when the model loads.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Dtype = Literal["float32", "bfloat16", "float16"]
"""The dtypes weights load in (roles.models.DTYPES maps them to torch dtypes)."""

AutocastDtype = Literal["bfloat16", "float16"]
"""What a role's ``autocast`` setting may name (None: no autocast)."""

CpuThreads = Annotated[int, Field(ge=1)] | Literal["auto"] | None
"""A role's ``cpu_threads`` setting: a number of torch threads, ``auto`` (see
`roles.models.cpu_thread_count`), or None (torch's default)."""


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia", "xla", "ipu", "hip", "ve", "fpga", "maia", "lazy",
                "vulkan", "opengl", "opencl", "ideep", "mkldnn", "meta", "privateuseone")
"""The device types ``torch.device`` reads (torch 2.x): a device setting was any string
it accepts before it was checked here, so every one of them still is. Written out
rather than asked of torch, so that reading a config imports no torch (the reward
package's rule)."""

DEVICE_PATTERN = re.compile(rf"^({'|'.join(DEVICE_TYPES)})(:\d+)?$")


def check_device(device: str) -> str:
    """`device` if it names a torch device: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...

    Raises:
        ValueError: naming the value and what to write instead.
    """
    if not DEVICE_PATTERN.match(device):
        raise ValueError(f"{device!r} is not a torch device; write cpu, cuda or cuda:N")
    return device


class ModelPlacement(BaseModel):
    """Where a model's weights live and in what dtype."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    dtype: Dtype = "float32"
    """Weights dtype: float32, bfloat16 or float16. A model trained with AdamW at a small
    learning rate keeps float32 (updates below bfloat16's resolution are lost); use the
    role's ``autocast``, where it has one, for speed."""
    device: str = "cpu"
    """A torch device: ``cpu``, ``cuda`` (the GPU the launcher's placement makes visible)
    or ``cuda:N``."""

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, device: str) -> str:
        return check_device(device)


class ModelSettings(ModelPlacement):
    """A causal LM a role loads: its directory, dtype, device and CPU threads."""

    model: str
    """A local Hugging Face causal LM directory (written by ``save_pretrained``)."""
    cpu_threads: CpuThreads = "auto"
    """torch threads on the CPU: a number, ``auto`` (every core this process may use for
    a model of 20M parameters or more, else 1), or None (torch's default). With ``auto``,
    roles that compute at the same time on a host (async mode, the reference beside the
    critic) split the cores between them for as long as they overlap
    (roles.models.limit_cpu_threads); a number is kept whatever else runs."""
