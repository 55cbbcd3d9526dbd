"""The actor system: actors, mailboxes, the ZeroMQ transport, the registry and the
structured message log. Knows nothing of RL."""
