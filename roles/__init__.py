"""The RL roles, one module per role, and the pure libraries they call."""
