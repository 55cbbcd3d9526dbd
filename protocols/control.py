"""Messages the runtime itself sends: replies for failures and acknowledgements,
flow-control credit, and liveness probes."""

from __future__ import annotations

from protocols.messages import message


@message("troupe.ok")
class Ok:  # handler -> asker: the ask succeeded and the handler returned nothing
    pass


@message("troupe.failure")
class Failure:  # handler -> asker: the ask failed
    error_type: str
    """Class name of the exception (``"ValueError"``) or a runtime reason
    (``"ActorDead"``, ``"DeadlineExceeded"``, ``"ProtocolError"``, ``"MailboxFull"``)."""
    message: str
    traceback: str = ""
    """The remote traceback, formatted, when the failure came from a handler."""


@message("troupe.credit")
class Credit:  # receiver -> sender: flow-control credit returned (counts travel in the header)
    pass


@message("troupe.ping")
class Ping:  # anyone -> actor: is the actor serving? answered with Pong outside the mailbox
    pass


@message("troupe.pong")
class Pong:  # actor -> pinger
    name: str
    role: str
    pid: int
