"""Example tasks and their actors (importable as `examples.*` by actor processes)."""
