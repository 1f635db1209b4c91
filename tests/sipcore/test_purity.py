"""House rule 1: the protocol layers are pure. No pure sipcore module imports I/O, clocks, randomness or pyee,
and ``import sipcore`` loads none of them (the asyncio shell loads on first use)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SIPCORE = Path(__file__).resolve().parents[2] / "sipcore"
SHELL_MODULES = {"endpoint", "transport", "tls", "ua"}
PURE_MODULES = sorted(p.stem for p in SIPCORE.glob("*.py") if p.stem not in SHELL_MODULES | {"__init__"})
FORBIDDEN = {"asyncio", "socket", "time", "random", "pyee", "selectors", "threading", "aiortc", "av", "numpy"}
#: attrs itself loads threading; what must never be loaded by ``import sipcore`` is the rest.
FORBIDDEN_LOADED = FORBIDDEN - {"threading"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Absolute import roots, and sibling modules imported relatively."""
    roots: set[str] = set()
    siblings: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
            elif node.level == 1:
                if node.module:
                    siblings.add(node.module.split(".")[0])
                else:
                    siblings.update(alias.name for alias in node.names)
    return roots, siblings


def test_there_are_pure_modules() -> None:
    assert {"message", "uri", "headers", "transaction", "framing"} <= set(PURE_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports(module: str) -> None:
    roots, siblings = _imports(SIPCORE / f"{module}.py")
    assert not roots & FORBIDDEN, f"durchwahl.sipcore.{module} imports {sorted(roots & FORBIDDEN)}"
    assert not siblings & SHELL_MODULES, (
        f"durchwahl.sipcore.{module} imports the asyncio shell {sorted(siblings)}"
    )


def test_import_sipcore_loads_no_io() -> None:
    modules = ", ".join(["durchwahl.sipcore", *(f"durchwahl.sipcore.{m}" for m in PURE_MODULES)])
    code = (
        "import sys; before = set(sys.modules); "
        f"import {modules}; "
        f"print(sorted((set(sys.modules) - before) & set({sorted(FORBIDDEN_LOADED)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=SIPCORE.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
