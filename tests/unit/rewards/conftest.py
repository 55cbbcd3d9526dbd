"""Shared by the reward tests: no math-verify worker outlives the module that started it
(the sandbox tests check that their test process has no child left)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from roles.rewards import shutdown_symbolic_workers


@pytest.fixture(autouse=True, scope="module")
def _stop_symbolic_workers() -> Iterator[None]:
    yield
    shutdown_symbolic_workers()
