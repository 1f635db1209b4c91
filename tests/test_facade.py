"""``import durchwahl``: the names an embedding application uses, each the very object of the module behind
it, loaded on first use so that importing the package loads no asyncio shell, pyee, aiortc or numpy."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import durchwahl
from durchwahl.routing.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_is_the_object_of_its_module() -> None:
    homes = durchwahl._HOMES
    assert set(durchwahl.__all__) == set(homes) | {"__version__"}
    for name, home in homes.items():
        assert getattr(durchwahl, name) is getattr(importlib.import_module(home), name), name
    assert set(durchwahl.__all__) <= set(dir(durchwahl))


def test_the_embedding_names_are_there() -> None:
    from durchwahl import CallRecord, FromTrunk, Registered, Server, ToEmployee

    assert Server.__name__ == "Server" and CallRecord.__name__ == "CallRecord"
    assert {Registered.__name__, FromTrunk.__name__, ToEmployee.__name__} == {
        "Registered",
        "FromTrunk",
        "ToEmployee",
    }
    with pytest.raises(ImportError):
        from durchwahl import NoSuchName  # type: ignore[attr-defined]  # noqa: F401


def test_the_version_is_the_installed_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert durchwahl.__version__ == version("durchwahl")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"durchwahl {durchwahl.__version__}"


def test_importing_durchwahl_loads_nothing_heavy() -> None:
    heavy = ["asyncio", "pyee", "aiortc", "av", "numpy", "durchwahl.routing.server"]
    code = f"import sys, durchwahl; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
