"""docs/architecture.md walks one step through named files and symbols; every one of
them must exist, so the page cannot drift from the code unnoticed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "architecture.md"
PATH = re.compile(r"`((?:protocols|runtime|roles|launch|tests|examples)/[\w/.*]*)`")
FILE_AND_SYMBOL = re.compile(r"`([\w/]+\.py)` — `([\w.]+)`")


def defined_names(path: Path) -> set[str]:
    """Classes, functions (methods too, as ``Class.method``) and module-level names of a module."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def named_paths() -> list[str]:
    return sorted(set(PATH.findall(PAGE.read_text())))


def test_the_page_names_files() -> None:
    assert len(named_paths()) > 20 and len(FILE_AND_SYMBOL.findall(PAGE.read_text())) > 15


@pytest.mark.parametrize("named", named_paths())
def test_every_file_the_page_names_exists(named: str) -> None:
    if "*" in named:
        assert list(REPO.glob(named)), f"docs/architecture.md names {named}, which matches nothing"
    else:
        assert (REPO / named).exists(), f"docs/architecture.md names {named}, which does not exist"


@pytest.mark.parametrize("path, symbol", sorted(set(FILE_AND_SYMBOL.findall(PAGE.read_text()))))
def test_every_symbol_the_page_names_is_defined_in_its_file(path: str, symbol: str) -> None:
    assert symbol in defined_names(REPO / path), f"docs/architecture.md says {path} defines {symbol}"
