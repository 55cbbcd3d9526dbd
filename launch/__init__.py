"""Everything a user runs: the `troupe` command line and the Python API (`Run`).

`from launch import Run` imports the API on first use, so the command line stays quick
to start.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"Run": "launch.run", "Evaluator": "launch.run", "EvalContext": "launch.run", "RunError": "launch.run",
         "export_checkpoint": "launch.export"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'launch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
