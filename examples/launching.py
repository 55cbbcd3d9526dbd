"""How the example scripts (`make demo`, `make demo-real`) run a topology: through the
Python API, `launch.Run`, as `troupe launch` does, from the repository root (the example
topologies name their model and data relative to it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from launch.run import Run, RunError
from runtime.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent


def run_example(topology: str | Path, overrides: Sequence[str], run_dir: Path) -> int:
    """Run `topology` in the foreground to its end; the exit code (0: finished), with
    where to look printed when it is not 0."""
    os.chdir(REPO)
    try:
        code = Run.from_topology(topology, overrides, run_dir).launch()
    except RunError as error:
        print(error, file=sys.stderr)
        return 2
    if code != 0:
        print(f"the run failed (exit {code}); see {RunDir(run_dir).logs} and `troupe logs {run_dir}`", file=sys.stderr)
    return code
