"""Shared by the package-rules tests: what a module imports, read from its source."""

import ast
import pathlib
from collections.abc import Iterator


def imported_modules(path: pathlib.Path) -> Iterator[str]:
    """Every module named in an import statement of the file at `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
