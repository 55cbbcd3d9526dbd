"""Running a causal LM in a role process: loading it, its position ids under left
padding, how many CPU threads torch uses, and autocast.

Every role that holds a model (trainer, generator, reference, critic) and the launch
tools (export, serving, offline evaluation) load it through `load_causal_lm`, so a
model directory means the same weights, dtype and padding side everywhere.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import torch

from roles.model_settings import AutocastDtype, CpuThreads, Dtype
from runtime.compute import ComputeWorker
from runtime.cores import CoreShare, usable_cpus
from runtime.cores import rebalance as rebalance_cores

if TYPE_CHECKING:  # transformers is imported where a model is loaded: the controller,
    # evaluator and reward processes use the settings only, and start faster
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(Dtype)}
"""The torch dtype of each `roles.model_settings.Dtype` (float32, bfloat16, float16)."""


def load_causal_lm(
    path: str | Path, dtype: str = "float32", device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a causal LM and its tokenizer from a local Hugging Face directory, in eval mode.

    The tokenizer pads on the left, with its eos token when it has no pad token.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (give a local directory written by save_pretrained)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] that count real tokens only, so left padding shifts nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


AUTO_THREADS_MIN_PARAMETERS = 20_000_000
"""``cpu_threads: auto`` gives a model this large every core, a smaller one a single
thread: a small model's kernels end before a second thread pays for waking up, and
its idle threads spinning between kernels take cores from the other role processes
(the arithmetic example's 0.5M-parameter model steps 19x slower with 2 threads per
role on a busy 2-core machine; SmolLM2-135M's forward and backward take half the time
with 2 threads on an idle one, docs/benchmarks.md)."""


def cpu_thread_count(threads: CpuThreads, model: torch.nn.Module | None = None) -> int | None:
    """The number of torch threads a ``cpu_threads`` setting means for `model` (None:
    leave torch's). ``auto``: every core this process may run on when the model has at
    least AUTO_THREADS_MIN_PARAMETERS parameters, else 1."""
    if threads != "auto":
        return threads
    if model is None or sum(parameter.numel() for parameter in model.parameters()) < AUTO_THREADS_MIN_PARAMETERS:
        return 1
    return len(usable_cpus())


def limit_cpu_threads(device: str, threads: CpuThreads, model: torch.nn.Module | None = None,
                      compute: ComputeWorker | None = None) -> None:
    """Set torch's intra-op threads for a role on the CPU (`cpu_thread_count`); call it on
    the thread that computes (OpenMP's thread count is the calling thread's).

    Role processes share the cores. Where several compute at the same time (async mode,
    the reference beside the critic, an evaluation beside training) and their threads
    together outnumber the cores, OpenMP threads spinning at barriers take turns with
    each other's work and a forward can take several times as long as with one thread.
    So ``auto`` with more than one core and the role's `compute` worker shares the cores
    (runtime.cores): each compute call gets ``cores // busy`` threads, busy counting the
    host's processes computing at that moment, resized between decoding steps and as
    each layer starts its forward and backward (`rebalance_between_layers`). A fixed
    number stays fixed."""
    count = cpu_thread_count(threads, model)
    if count is None or device.startswith("cuda"):
        return
    torch.set_num_threads(count)
    if threads == "auto" and count > 1 and compute is not None:
        try:
            share = CoreShare(count, torch.set_num_threads)
        except OSError as error:  # an untrusted or unusable directory: keep every core, as before sharing
            logger.warning("cpu_threads auto: %s threads without sharing the cores (%s)", count, error)
            return
        compute.share_cores(share)
        if model is not None:
            rebalance_between_layers(model)


SHARE_RECOUNT_S = 0.05
"""How often a layer hook counts who computes (runtime.cores.CoreShare.rebalance)."""


def rebalance_between_layers(model: torch.nn.Module) -> None:
    """Resize this process's core share as each layer of the model's layer lists starts
    its forward and its backward: one micro-batch on one thread takes seconds, too long
    to wait before growing back when the process it shared with stops. A count costs tens
    of microseconds and is made at most every SHARE_RECOUNT_S."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for layer in module:
                layer.register_forward_pre_hook(_rebalance_before_forward)
                layer.register_forward_hook(_rebalance_before_backward)


def _rebalance_before_forward(module: torch.nn.Module, args: Any) -> None:
    rebalance_cores(SHARE_RECOUNT_S)


def _rebalance_before_backward(module: torch.nn.Module, args: Any, output: Any) -> None:
    hidden = output[0] if isinstance(output, tuple) and output else output
    if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
        hidden.register_hook(_rebalance_on_gradient)  # the CPU backward runs on the calling (compute) thread


def _rebalance_on_gradient(gradient: torch.Tensor) -> None:
    rebalance_cores(SHARE_RECOUNT_S)


AUTOCAST_DTYPES = {name: DTYPES[name] for name in get_args(AutocastDtype)}


def autocast_for(device: str, dtype: str | None) -> AbstractContextManager[Any]:
    """torch.autocast on the device's type in `dtype` ("bfloat16" or "float16"), or nothing for None."""
    if dtype is None:
        return nullcontext()
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast {dtype!r} is not one of {sorted(AUTOCAST_DTYPES)} (or null for none)")
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[dtype])
