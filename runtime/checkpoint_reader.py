"""Loading a torch.distributed.checkpoint (DCP) folder without unpickling code.

DCP keeps tensor data in raw ``*.distcp`` files, but its index, ``.metadata``, is a
pickle, and torch's `FileSystemReader` reads it with a plain `pickle.load` (torch
2.13 has no option to restrict it). A pickle can name any importable callable, so
a crafted ``.metadata`` runs code in whatever process loads the folder. The non-tensor
entries a checkpoint holds (an optimizer's step count, hyperparameters) are read by
torch itself with ``torch.load(weights_only=True)``, which is safe.

`AllowListReader` reads ``.metadata`` with an unpickler that resolves only the
classes DCP's metadata is made of (its dataclasses, torch.Size, dtypes and layouts,
paths); any other name fails before it is called, with `UnsafeCheckpointError`. It
also refuses data entries whose file lies outside the checkpoint folder, so a
crafted index cannot read other files into the model.

What remains trusted: the values. A checkpoint can still hold any weights, and a
huge crafted index can still exhaust memory.
"""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta


class UnsafeCheckpointError(ValueError):
    """A checkpoint's index names something other than DCP's own metadata types."""


_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a lookup of a torch.layout by its name
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}
"""Every global DCP's ``.metadata`` refers to (torch 2.13, one rank or FSDP2 shards),
besides torch dtypes; each only builds a value when called."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.path} refers to {module}.{name}, which is not part of a torch.distributed.checkpoint index: "
            "it was not written by troupe's trainer (or by a torch this reader does not know); not loaded"
        )


class AllowListReader(FileSystemReader):
    """A `FileSystemReader` whose ``.metadata`` is unpickled with an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        with open(path, "rb") as file:
            metadata = _MetadataUnpickler(file, path).load()
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path} holds a {type(metadata).__name__}, not a torch.distributed.checkpoint Metadata")
        for info in (metadata.storage_data or {}).values():
            _check_inside(path, getattr(info, "relative_path", None))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # as torch's own reader does
        return metadata


def _check_inside(index: Path, relative: Any) -> None:
    """A data file named by the index must be a plain name in the checkpoint folder."""
    pure = PurePosixPath(relative) if isinstance(relative, str) else None
    if pure is None or pure.is_absolute() or len(pure.parts) != 1 or pure.name in ("", ".", "..") or "\\" in relative:
        raise UnsafeCheckpointError(f"{index} names data file {relative!r}, which is not a file of the checkpoint folder")


def load_distributed_checkpoint(state: dict[str, Any], folder: Path | str) -> None:
    """`torch.distributed.checkpoint.load` of `folder` into `state` (in place, resharding
    as DCP does; collective when a process group is up), reading its index through
    `AllowListReader`.

    The index is checked here first, so a refused one raises `UnsafeCheckpointError`
    on every rank before any collective starts (inside ``dcp.load`` it would come back
    wrapped in a CheckpointException)."""
    AllowListReader(str(folder)).read_metadata()
    dcp.load(state, storage_reader=AllowListReader(str(folder)))

