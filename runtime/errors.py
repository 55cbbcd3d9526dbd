"""Errors an actor's caller can see.

A failed `ask` comes back to the caller as one of these; a failed `tell` crashes
the receiving actor instead (its supervisor decides what happens next).
"""

from __future__ import annotations


class ActorError(Exception):
    """Base class of the runtime's errors."""


class RemoteError(ActorError):
    """The handler of an ask raised, or the receiver refused the message.

    Attributes:
        error_type: class name of the remote exception, or a runtime reason such as
            ``"ProtocolError"`` (the receiver could not decode the request) or
            ``"MailboxFull"``.
        remote_traceback: the formatted traceback from the remote process ("" when
            the failure did not come from a handler).
    """

    def __init__(self, target: str, error_type: str, message: str, remote_traceback: str = "") -> None:
        self.target = target
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        text = f"{target} failed with {error_type}: {message}"
        if remote_traceback:
            text += f"\n--- remote traceback ({target}) ---\n{remote_traceback.rstrip()}"
        super().__init__(text)


class ActorDeadError(ActorError):
    """The target stopped, was killed, or is not registered: no reply will come."""


class DeadlineExceeded(ActorError, TimeoutError):
    """A wait ran past its deadline: no reply to an ask, or no flow-control credit for a send."""


class ActorSuperseded(ActorError):
    """Another process registered under this actor's name; this one must stop."""


class AuthenticationError(ActorError):
    """The peer refused this process's connection: the CURVE handshake failed (no keys,
    or keys the run does not authorize)."""
