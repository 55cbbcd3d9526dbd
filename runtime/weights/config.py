"""Settings of the weight broadcast channel, shared by trainer and generator roles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WeightChannelConfig(BaseModel):
    """Bucket size, the deadline of every phase, and who publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    bucket_mb: float = Field(256.0, gt=0)
    """Size of one flat per-dtype bucket, in MiB (a larger tensor gets a bucket of its own)."""
    chunk_mb: float = Field(32.0, gt=0)
    """Buckets travel in pieces of at most this many MiB, each broadcast as soon as trainer
    rank 0 has packed it, so sending starts after the first piece instead of after the
    first whole bucket. Pieces of 16 MiB and more broadcast as fast as one large buffer."""
    delta: bool = False
    """Send a version as a sparse delta of the previous one: per piece, the positions of the
    elements whose bits changed (int32 indices or a bitmap) and their new values, or the
    whole piece where that is smaller. Used when every generator of the publication holds
    the previous version; otherwise, and for catch-ups and retries, the full version
    travels. Trainer rank 0 keeps the last version's buckets to compare against (the memory
    of ``keep_last``), and spends a compare per element and a scan of the changes; it pays
    where the link is the bottleneck and most values repeat (bfloat16 weights at small
    learning rates, see ``send_dtype``)."""
    send_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Cast floating-point weights to this dtype for the transfer (None: send them as the
    trainer holds them). ``bfloat16`` from a float32 trainer halves the bytes, and at small
    learning rates most bfloat16 values repeat from one version to the next (``delta``).
    The generators load the cast values (a float32 generator holds bfloat16-rounded weights)."""
    announce_timeout_s: float = Field(30.0, gt=0)
    """Deadline for a generator to accept an announcement (or an abort)."""
    ready_timeout_s: float = Field(60.0, gt=0)
    """Deadline for every member to join a new broadcast group."""
    transfer_timeout_s: float = Field(300.0, gt=0)
    """Deadline for all buckets to reach every generator; also the timeout of every
    operation of the group, so no broadcast can block longer."""
    commit_timeout_s: float = Field(120.0, gt=0)
    """Deadline for a generator to load the received weights and acknowledge."""
    join_timeout_s: float = Field(600.0, gt=0)
    """How long a starting generator waits for the publisher to catch it up."""
    send_in_place: bool = True
    """Trainer rank 0 moves a full replica's parameters and buffers into the buckets at its
    first publication (each becomes a view of its slot; values, Parameter objects and the
    optimizer's state stay), so later publications broadcast straight from the model's
    memory and pack nothing. The copy ``keep_last`` and ``delta`` need is then made after
    the transfer, on the compute thread before the next training step, or patched with
    each delta. FSDP shards and tensors cast for ``send_dtype`` cannot move: they are
    copied into the buckets at every publication, as without this setting."""
    keep_last: bool = True
    """Trainer rank 0 keeps the last published buckets (one copy of the weights in its
    memory), so joining generators and survivors of a failed transfer are caught up at
    once. Without it they wait for the next publication."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """``auto``: NCCL when the weights are CUDA tensors, gloo otherwise."""
    store_host: str | None = None
    """Address generators reach trainer rank 0's rendezvous store at (default: the host
    of trainer rank 0's own endpoint)."""
    publisher: str = "trainer-0"
    """The actor that publishes (trainer rank 0)."""
    generator_role: str = "generator"
    """Role whose members receive the weights."""
