"""Settings of the weight broadcast channel, shared by trainer and generator roles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WeightChannelConfig(BaseModel):
    """Bucket size, the deadline of every phase, and who publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    bucket_mb: float = Field(256.0, gt=0)
    """Size of one flat per-dtype bucket, in MiB (a larger tensor gets a bucket of its own)."""
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
