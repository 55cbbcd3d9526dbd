"""The processes the reward functions call on: the code sandbox and the math-verify worker.

Not a pure library: the modules here start, supervise and kill processes. The pure
reward logic in `roles.rewards` calls them through a narrow interface:

- `roles.sandbox.runner`: `run_in_sandbox` and `run_with_tests` (with `SandboxConfig`
  and `SandboxRun` from `roles.sandbox.config`), and `map_concurrently` for batches;
  the threat model is written down there. `processes` and `reaping` start and end a
  run's harness processes; `harness` is what runs inside them.
- `roles.sandbox.symbolic`: `shared_symbolic_checker`, math-verify under a time limit
  in a child process (`symbolic_worker`).

Nothing here imports `roles.rewards`. This file, like the ``roles`` package above it,
imports nothing: the sandbox harness imports it before anything but the standard
library is importable.
"""
