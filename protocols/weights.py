"""Messages of the weight broadcast channel (see runtime/weights).

One publication moves through four phases, each with its own deadline:

    trainer-0 --WeightsAnnounce--> generators          (version, group, bucket layout)
    generators --WeightsReady--> trainer-0             (joined the broadcast group)
    trainer-0 ==torch.distributed broadcast==> generators   (the buckets, piece by piece)
    trainer-0 --WeightsCommit--> generators --> WeightsLoaded(version)

The commit is sent as the transfer starts: a generator answers it once it has received
and loaded every piece, so acknowledging costs no round trip after the last piece.

A generator that starts later asks trainer-0 with `WeightsJoin` and is caught up
(the same four phases, to it alone) before it reports ready.
"""

from __future__ import annotations

from protocols.messages import message


@message("weights.tensor")
class TensorSpec:  # part of a BucketSpec
    name: str
    """The generator-side name (after the publisher's name mapping)."""
    shape: tuple[int, ...]
    offset: int
    """Where the tensor starts in its bucket, in elements of the bucket's dtype."""


@message("weights.bucket")
class BucketSpec:  # part of WeightsAnnounce: one flat buffer of one dtype
    dtype: str
    """A torch dtype name without the ``torch.`` prefix (``bfloat16``)."""
    numel: int
    tensors: list[TensorSpec]


@message("weights.piece")
class PieceSpec:  # part of WeightsAnnounce: one broadcast, elements [start, start + numel) of a bucket
    bucket: int
    """Index into the announcement's buckets."""
    start: int
    numel: int


@message("weights.group")
class GroupSpec:  # part of WeightsAnnounce: how to join the broadcast group
    group_id: int
    store_host: str
    store_port: int
    rank: int
    world_size: int
    backend: str
    """``gloo`` or ``nccl``."""
    timeout_s: float
    """Every operation of the group fails after this long instead of hanging."""


@message("weights.announce")
class WeightsAnnounce:  # trainer-0 -> generator (ask; reply Ok once buffers are ready to receive)
    version: int
    group: GroupSpec
    buckets: list[BucketSpec]
    pieces: list[PieceSpec]
    """What travels, in order: every bucket cut into pieces, listed in the order trainer-0
    finishes packing them."""
    delta_base: int | None = None
    """None: every piece travels whole. A version: each piece travels as a header (its
    encoding and count) and a payload that patches the generator's exact copy of version
    `delta_base` (runtime.weights.delta); every generator announced to holds it."""


@message("weights.ready")
class WeightsReady:  # generator -> trainer-0 (tell): joined the group, receiving
    name: str
    version: int
    group_id: int


@message("weights.commit")
class WeightsCommit:  # trainer-0 -> generator (ask; reply WeightsLoaded)
    version: int


@message("weights.loaded")
class WeightsLoaded:  # generator -> trainer-0
    name: str
    version: int
    receive_s: float
    """From the announce to the last bucket received."""
    load_s: float
    """The pause: how long the generator stopped serving to load the weights."""


@message("weights.abort")
class WeightsAbort:  # trainer-0 -> generator (ask; reply Ok): forget this transfer
    version: int
    reason: str
    rejoin: bool = False
    """True when the generator was dropped from the channel: it joins again (and is
    caught up) when it can."""


@message("weights.join")
class WeightsJoin:  # generator -> trainer-0 (ask; reply WeightsJoined once caught up)
    name: str
    endpoint: str


@message("weights.joined")
class WeightsJoined:  # trainer-0 -> generator
    version: int | None
    """The version the generator now holds (None: it was not caught up and keeps the
    weights it started with)."""
    current: int = 0
    """The latest version published (0: none yet). A generator holding an older one stays
    unroutable until a publication reaches it (only without ``keep_last``)."""


@message("weights.publish")
class PublishWeights:  # controller -> every trainer rank (ask; reply PublishReport)
    republish: bool = False
    """Send the weights under the version the trainer holds instead of the next one.
    After `LoadCheckpoint` restored version N, the generators get the restored weights
    as N, so a resumed run numbers versions as an uninterrupted one (N after step N)."""


@message("weights.report")
class PublishReport:  # trainer rank -> controller
    version: int
    rank: int
    committed: list[str]
    """Generators that loaded this version."""
    dropped: dict[str, str]
    """Generators that did not, and why; they are out of the group until they join again."""
    missed: list[str]
    """Generators still in the group that did not get this version because the transfer
    failed (only without ``keep_last``; with it they are caught up at once)."""
    nbytes: int
    buckets: int
    gather_s: float
    """Time this rank spent gathering full tensors and packing buckets."""
    total_s: float
    pause_s: float = 0.0
    """The longest any generator stopped serving to load this version."""
    retried: bool = False
    """The first transfer failed and the survivors were caught up from the retained copy."""
    sent_bytes: int = 0
    """Bytes broadcast to the generators for this version (piece headers included; a retry
    adds its own): `nbytes` for a full version, less for a delta."""
    delta_share: float = 0.0
    """The share of `nbytes` whose pieces travelled as deltas in the first delivery
    (0.0: a full version)."""
