"""A generator's staging buffers: where versions are received, and which set holds the
base a delta patches.

There are two sets of per-bucket buffers. A loader that adopts the received buffers
(the model's tensors become views of them) is using one set, so a version is received
into the other; a copying loader uses set 0 throughout. The set a version was loaded
from holds that version's exact bytes until something is received into it: that set
and version are the base. A delta is received into the target set: patched in place
when the target is the base set, or copied from the base piece by piece first when it
is not (the base set is then the one the model is using, and is only read).
"""

from __future__ import annotations

import threading

import torch

from protocols.weights import BucketSpec
from runtime.errors import ActorError
from runtime.weights.layout import allocate


class Staging:
    """Both sets of staging buffers, which one the model uses, and which one is the base."""

    def __init__(self) -> None:
        self._sets: list[tuple[list[BucketSpec], list[torch.Tensor], torch.device] | None] = [None, None]
        self.in_use: int | None = None
        """The set the model's tensors are views of (adopting loaders only)."""
        self._writing: list[threading.Event | None] = [None, None]
        """Per set: cleared while a receiving thread may still write into it (one whose
        receive was cancelled runs on until its group fails or times out)."""
        self.base: tuple[int, int] | None = None
        """(set, version): the set holding the last loaded version's exact bytes."""

    def target(self, buckets: list[BucketSpec], device: torch.device) -> tuple[int, list[torch.Tensor]]:
        """A set the model is not using, to receive into, reused while the layout and
        device stay the same and no earlier receive may still write into it."""
        index = 1 if self.in_use == 0 else 0
        staged, writing = self._sets[index], self._writing[index]
        if staged is None or staged[0] != buckets or staged[2] != device or (writing is not None and not writing.is_set()):
            self._sets[index] = None  # let the old ones go before allocating the new
            staged = self._sets[index] = (buckets, [allocate(bucket, device) for bucket in buckets], device)
            self._forget_base(index)
        return index, staged[1]

    def base_buffers(self, version: int, buckets: list[BucketSpec], device: torch.device) -> tuple[int, list[torch.Tensor]]:
        """The set holding `version` in this layout, to patch a delta of it.

        Raises:
            ActorError: this generator holds no exact copy of `version` (the publisher then
                drops it, and it is caught up with a full version when it joins again).
        """
        base = self.base
        if base is None or base[1] != version:
            have = "no exact copy of any version" if base is None else f"an exact copy of version {base[1]}"
            raise ActorError(f"asked to patch version {version}, but this generator holds {have}")
        staged = self._sets[base[0]]
        if staged is None or staged[0] != buckets or staged[2] != device:
            raise ActorError(f"asked to patch version {version} in another bucket layout or device than it was received in")
        return base[0], staged[1]

    def start_writing(self, index: int) -> threading.Event:
        """A receive into set `index` begins: it is no longer an exact copy of anything
        until it is loaded. The receiving thread sets the returned event when it stops."""
        self._forget_base(index)
        writing = self._writing[index] = threading.Event()
        return writing

    def loaded(self, index: int, version: int, adopted: bool) -> None:
        """Set `index` was loaded as `version` (and the model uses it, if `adopted`)."""
        if adopted:
            self.in_use = index
        self.base = (index, version)

    def _forget_base(self, index: int) -> None:
        if self.base is not None and self.base[0] == index:
            self.base = None
