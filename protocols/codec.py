"""Payload codec: msgpack for structure, one raw frame per tensor.

A payload is any nesting of dicts, lists, tuples, None, bools, ints, floats,
strings, bytes, torch tensors and numpy arrays. `encode_payload` packs the
structure with msgpack and leaves every tensor in place as a small extension
value holding its index; the tensor's bytes become a separate buffer (a frame on
the wire) described by a `TensorDescriptor`. Nothing is ever pickled.

Sending is zero-copy for contiguous CPU tensors: the frame is a view of the
tensor's storage. A copy is made when a tensor is not contiguous, lives on an
accelerator, or is a lazy conjugate/negative view.

Receiving is zero-copy too: a decoded tensor is a view of the received frame,
and keeps the frame alive. The rule for when a copy is made instead:

* the frame's address is not aligned for the dtype (ZeroMQ may pack small
  messages into a shared receive buffer at any offset); reading such memory as a
  wider type is not safe for every kernel, so it is copied into aligned memory;
* the buffer is read-only (for example `bytes` handed to `decode_payload`
  directly), because torch tensors must be writable;
* the tensor is empty (there is nothing to view).

Across processes a received tensor owns its memory and may be written in place.
Within one process (ZeroMQ `inproc`) the frame can be the sender's own memory:
clone before writing if the sender may still read it.
"""

from __future__ import annotations

import gc
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack
import numpy as np
import torch

from protocols.errors import ProtocolError

if TYPE_CHECKING:
    from protocols.shared_memory import SharedPlace

TENSOR_EXT_CODE = 1
"""msgpack extension type code that marks "tensor number N of this message"."""

_TORCH_DTYPE_NAMES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
)
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in _TORCH_DTYPE_NAMES if hasattr(torch, name)
}
"""Every torch dtype the codec carries, by wire name."""
_TORCH_DTYPE_TO_NAME = {dtype: name for name, dtype in TORCH_DTYPES.items()}

NUMPY_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex: plain bytes


class TensorDescriptor(NamedTuple):
    """Where one tensor's bytes are and how to read them.

    Attributes:
        dtype: wire name of the dtype (a key of `TORCH_DTYPES` for torch tensors,
            numpy's `dtype.str` such as ``"<f4"`` for numpy arrays).
        shape: the tensor's shape; ``()`` for a 0-d tensor.
        frame: where the bytes are: the index of the frame that holds them, counted
            in the whole multipart message (frame 0 is the header), or a
            `protocols.shared_memory.SharedPlace` in a segment the sender lent (a
            transport on one host puts large tensors there instead of in a frame).
        array: ``"torch"`` or ``"numpy"``: which type the receiver rebuilds.
    """

    dtype: str
    shape: tuple[int, ...]
    frame: int | SharedPlace
    array: str

    def to_wire(self) -> list[Any]:
        place = self.frame if type(self.frame) is int else self.frame.to_wire()
        return [self.dtype, list(self.shape), place, self.array]


def _element_size(descriptor: TensorDescriptor) -> int:
    if descriptor.array == "torch":
        return TORCH_DTYPES[descriptor.dtype].itemsize
    return np.dtype(descriptor.dtype).itemsize


def expected_nbytes(descriptor: TensorDescriptor) -> int:
    """Bytes a frame must hold for this descriptor (exact integer arithmetic)."""
    return math.prod(descriptor.shape) * _element_size(descriptor)


def tensor_buffer(tensor: torch.Tensor) -> tuple[str, memoryview]:
    """The wire dtype name and a flat byte view of a tensor (copying only if needed)."""
    dtype_name = _TORCH_DTYPE_TO_NAME.get(tensor.dtype)
    if dtype_name is None:
        raise ProtocolError(
            f"torch dtype {tensor.dtype} cannot be sent; supported: {sorted(TORCH_DTYPES)}"
        )
    if tensor.layout != torch.strided or tensor.is_nested:
        kind = "nested" if tensor.is_nested else str(tensor.layout)
        raise ProtocolError(f"only dense tensors can be sent, got a {kind} tensor; call .to_dense() first")
    if tensor.is_meta:
        raise ProtocolError("a meta tensor has no data to send")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    return dtype_name, memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def array_buffer(array: np.ndarray) -> tuple[str, memoryview]:
    """The wire dtype string and a flat byte view of a numpy array."""
    if array.dtype.kind not in NUMPY_KINDS:
        raise ProtocolError(
            f"numpy dtype {array.dtype} cannot be sent: only bool, integer, float and complex "
            "arrays travel as raw bytes (object and string arrays would need pickling)"
        )
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.dtype.str, memoryview(array.reshape(-1).view(np.uint8))


def _required_alignment(descriptor: TensorDescriptor) -> int:
    """Natural alignment of the element type (a complex number is two reals)."""
    if descriptor.array == "torch":
        dtype = TORCH_DTYPES[descriptor.dtype]
        is_complex = dtype.is_complex
        size = dtype.itemsize
    else:
        dtype = np.dtype(descriptor.dtype)
        is_complex = dtype.kind == "c"
        size = dtype.itemsize
    return max(1, size // 2 if is_complex else size)


def rebuild_tensor(descriptor: TensorDescriptor, buffer: memoryview) -> torch.Tensor | np.ndarray:
    """A tensor (or numpy array) viewing `buffer`, by the rule in the module docstring.

    The caller has checked that `len(buffer) == expected_nbytes(descriptor)`.
    """
    shape = descriptor.shape
    alignment = _required_alignment(descriptor)
    if descriptor.array == "numpy":
        dtype = np.dtype(descriptor.dtype)
        if len(buffer) == 0:
            return np.empty(shape, dtype=dtype)
        flat = np.frombuffer(buffer if not buffer.readonly else bytearray(buffer), dtype=np.uint8)
        if flat.__array_interface__["data"][0] % alignment:
            flat = flat.copy()
        return flat.view(dtype).reshape(shape)
    dtype = TORCH_DTYPES[descriptor.dtype]
    if len(buffer) == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(buffer if not buffer.readonly else bytearray(buffer), dtype=torch.uint8)
    if flat.data_ptr() % alignment:
        flat = flat.clone()  # fresh allocations are aligned
    return flat.view(dtype).view(shape)


class _Encoder:
    """msgpack `default` hook that pulls tensors out into separate buffers."""

    def __init__(self, first_frame: int) -> None:
        self.first_frame = first_frame
        self.descriptors: list[TensorDescriptor] = []
        self.buffers: list[memoryview] = []

    def _add(self, dtype: str, shape: tuple[int, ...], array: str, buffer: memoryview) -> msgpack.ExtType:
        index = len(self.descriptors)
        self.descriptors.append(TensorDescriptor(dtype, shape, self.first_frame + index, array))
        self.buffers.append(buffer)
        return msgpack.ExtType(TENSOR_EXT_CODE, index.to_bytes(4, "little"))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            dtype, buffer = tensor_buffer(value)
            return self._add(dtype, tuple(value.shape), "torch", buffer)
        if isinstance(value, np.ndarray):
            dtype, buffer = array_buffer(value)
            return self._add(dtype, value.shape, "numpy", buffer)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, int):  # msgpack hands over only the ints it cannot pack
            raise ProtocolError(f"integer {value} does not fit in 64 bits (msgpack's range is -2**63 .. 2**64-1)")
        to_wire = getattr(value, "__wire__", None)  # Batch and typed messages describe themselves
        if to_wire is not None:
            return to_wire()
        raise ProtocolError(
            f"cannot encode a value of type {type(value).__qualname__}: payloads hold None, bool, "
            "int, float, str, bytes, lists, tuples, dicts, torch tensors and numpy arrays"
        )


def encode_payload(value: Any, first_frame: int = 1) -> tuple[bytes, list[TensorDescriptor], list[memoryview]]:
    """Pack `value` into msgpack bytes plus one buffer per tensor.

    Args:
        value: the payload (see the module docstring for what it may hold).
        first_frame: frame index the first tensor buffer will have on the wire.

    Returns:
        (packed structure, descriptors, buffers); ``descriptors[i]`` describes ``buffers[i]``.

    Raises:
        ProtocolError: a value that cannot travel (unknown type, object array,
            integer beyond 64 bits, unsupported dtype).
    """
    encoder = _Encoder(first_frame)
    try:
        packed = msgpack.packb(value, default=encoder, use_bin_type=True, datetime=False)
    except ProtocolError:
        raise
    except (OverflowError, ValueError, TypeError) as error:  # msgpack's own refusals
        raise ProtocolError(f"cannot encode payload: {error}") from error
    return packed, encoder.descriptors, encoder.buffers


class ObjectBudget:
    """How many more Python objects decoding may still create (shared by a message's
    header and payload).

    Decoding msgpack costs time and memory per object, not per byte: a megabyte of
    empty arrays becomes a million Python lists (about 250 ns and 60 bytes each).
    Every container counts itself and its items, so the budget bounds the work of a
    decode whatever the bytes hold.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise ProtocolError(
                f"message holds more than {self.limit} msgpack values; send bulk data as tensors "
                "(or raise RuntimeSettings.max_header_objects)"
            )


def unpack_limited(data: bytes | memoryview, ext_hook: Any = None, budget: ObjectBudget | None = None) -> Any:
    """msgpack-unpack untrusted bytes; every failure becomes a ProtocolError.

    msgpack caps every claimed length at the size of the input, so a forged length
    cannot make it allocate more than the input's size; `budget` bounds the number
    of objects built. The garbage collector is paused meanwhile: its passes over
    the containers being built made decoding many small ones several times slower.
    """
    kwargs: dict[str, Any] = {"ext_hook": ext_hook} if ext_hook is not None else {}
    if budget is not None:
        def counted(container: Any) -> Any:
            budget.spend(1 + len(container))
            return container

        kwargs.update(list_hook=counted, object_hook=counted)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=0, **kwargs)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises many types (ExtraData, StackError, UnicodeDecodeError, ...)
        raise ProtocolError(f"malformed msgpack data: {type(error).__name__}: {error}") from error
    finally:
        if collecting:
            gc.enable()


def decode_payload(
    packed: bytes | memoryview, tensors: list[torch.Tensor | np.ndarray], budget: ObjectBudget | None = None
) -> Any:
    """Unpack a payload, putting ``tensors[i]`` where the encoder left index i."""

    def ext_hook(code: int, data: bytes) -> Any:
        if code != TENSOR_EXT_CODE:
            raise ProtocolError(f"unknown msgpack extension type {code} in payload")
        if len(data) != 4:
            raise ProtocolError(f"tensor reference must be 4 bytes, got {len(data)}")
        index = int.from_bytes(data, "little")
        if index >= len(tensors):
            raise ProtocolError(f"payload refers to tensor {index} but the message carries {len(tensors)}")
        return tensors[index]

    return unpack_limited(packed, ext_hook, budget)
