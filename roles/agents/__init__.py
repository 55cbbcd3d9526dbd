"""Multi-turn episodes: environments, tool calls and trajectories as tokens.

Pure code (no transport, no event loop, no processes): `tool_calls` reads the tool
calls of a model turn in a model family's format, `environments` holds the episode
interface and the built-in environments, `trajectory` keeps an episode's tokens, loss
mask and log-probs, and `chat_tokens` finds the tokens a chat template puts between
turns without re-tokenizing what the model sampled. docs/agents.md describes them.
"""
