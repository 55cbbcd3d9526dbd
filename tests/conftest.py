"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Actor processes spawned by tests import test modules (tests.component.actors):
# they need the repository root on their import path, whatever the cwd.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
