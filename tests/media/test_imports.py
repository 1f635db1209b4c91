"""The media modules are pure: no I/O imports, and neither aiortc nor av is loaded by importing them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[2] / "media"
#: The one I/O shell of the media layer (DESIGN: "pure + one I/O shell").
SHELL_MODULES = {"session"}
PURE_MODULES = sorted(p.stem for p in MEDIA.glob("*.py") if p.stem not in SHELL_MODULES | {"__init__"})
FORBIDDEN = {"asyncio", "socket", "time", "pyee", "aiortc", "av", "selectors", "threading"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


#: Modules that decode audio files import av inside the one function that needs it (checked below: importing
#: them still loads no av).
DECODES_FILES = {"greeting": {"av"}, "dtmf_cli": {"av"}}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io(module: str) -> None:
    assert not _imported_roots(MEDIA / f"{module}.py") & (FORBIDDEN - DECODES_FILES.get(module, set()))


def test_importing_media_loads_neither_aiortc_nor_av() -> None:
    modules = ", ".join(["durchwahl.media", *(f"durchwahl.media.{m}" for m in PURE_MODULES)])
    code = f"import sys, {modules}; print(sorted(m for m in ('aiortc', 'av') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=MEDIA.parent, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
