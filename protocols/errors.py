"""The one error type of the protocols layer."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message could not be encoded or decoded.

    The text always says what was wrong (which field, which frame, which limit), so a
    receiver can log it and a sender can fix it. Decoding never raises anything else:
    any malformed input, however random, ends in this error.
    """

    message_bytes: int | None = None
    """When decoding refused a message whose size it had already worked out: that size,
    frames and shared memory together (what its sender spent in flow-control credit)."""
