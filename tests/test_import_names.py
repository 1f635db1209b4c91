"""The stack is installed as durchwahl.sipcore, durchwahl.media and durchwahl.routing, and only so: no file
imports the repository's folders by their top-level names (that would load a second copy of a module, with
its own classes and state, beside the one everything else uses)."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_NAMES = {"sipcore", "media", "routing"}
FOLDERS = ("durchwahl", "sipcore", "media", "routing", "tests", "fuzz", "bench", "examples", ".ci")


def python_files() -> Iterator[Path]:
    for folder in FOLDERS:
        for where, _, names in os.walk(ROOT / folder):  # links (durchwahl/sipcore -> ../sipcore) not followed
            yield from (Path(where) / name for name in names if name.endswith(".py"))


def old_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in OLD_NAMES]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] in OLD_NAMES
        ):
            found.append(str(node.module))
    return [f"{path.relative_to(ROOT)}:{name}" for name in found]


def test_the_walk_sees_the_stack() -> None:
    seen = {path.relative_to(ROOT).parts[0] for path in python_files()}
    assert {"sipcore", "media", "routing", "durchwahl", "tests"} <= seen


def test_nothing_imports_the_top_level_names() -> None:
    assert [hit for path in python_files() for hit in old_imports(path)] == []
