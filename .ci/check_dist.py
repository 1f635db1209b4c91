"""What .ci/package checks inside the built files and the installed package (standard library only).

``check_dist.py archives REPO SDIST WHEEL``: the sdist has every tracked file a distributor needs; the wheel
has the packages, the example office and the licence.
``check_dist.py installed`` (the fresh virtualenv's python, in a folder outside the repository): everything
is imported from the virtualenv.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

#: The top-level names the wheel installs, and the folder of its stack inside the wheel ("": the top level).
TOP_LEVEL = {"durchwahl"}
STACK = "durchwahl/"
#: The command line's module.
CLI = "durchwahl.routing.cli"
#: Folders and files of the repository that the sdist must carry whole (git's list of them).
SDIST_TREES = (
    "sipcore",
    "media",
    "routing",
    "durchwahl",
    "tests",
    "docs",
    "examples",
    "fuzz",
    "bench",
    ".ci",
)
SDIST_FILES = ("LICENSE", "README.md", "Makefile", "pyproject.toml", "MANIFEST.in")
#: The public names an embedding application imports (docs/EMBEDDING.md).
FACADE = ("Server", "CallRecord", "Registered", "ToEmployee", "FromTrunk", "DialString", "ConfigError")


def fail(message: str) -> None:
    print(f"check_dist: {message}", file=sys.stderr)
    sys.exit(1)


def check_archives(repo: Path, sdist: Path, wheel: Path) -> None:
    tracked = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--", *SDIST_TREES, *SDIST_FILES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        missing = sorted(set(tracked) - set(members))
        if missing:
            fail(f"{sdist.name} lacks {len(missing)} tracked files: {', '.join(missing[:10])}")
        links = sorted(name for name, m in members.items() if m.issym() or m.islnk())
        if links:
            fail(f"{sdist.name} holds links instead of files: {', '.join(links)}")
        # durchwahl/sipcore/… (with the stack under durchwahl: a link in the repository) is a copy
        for name, member in members.items():
            folder = name.removeprefix("durchwahl/")
            stack = folder.split("/", 1)[0] in ("sipcore", "media", "routing")
            if folder != name and stack and member.isfile():
                copy, source = tar.extractfile(member), tar.extractfile(members[folder])
                if copy is None or source is None or copy.read() != source.read():
                    fail(f"{sdist.name}: {name} is not a copy of {folder}")
        for name in ("office.toml", "greeting.wav"):
            packaged = tar.extractfile(members[f"routing/example/{name}"])
            example = tar.extractfile(members[f"examples/{name}"])
            if packaged is None or example is None or packaged.read() != example.read():
                fail(f"{sdist.name}: routing/example/{name} is not a copy of examples/{name}")
    print(f"{sdist.name}: {len(members)} files, every one of the {len(tracked)} tracked ones")

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
        if top != TOP_LEVEL:
            fail(f"{wheel.name} installs {sorted(top)}, expected {sorted(TOP_LEVEL)}")
        info = next(name.split("/", 1)[0] for name in names if name.endswith(".dist-info/METADATA"))
        if f"{info}/licenses/LICENSE" not in names:
            fail(f"{wheel.name} has no licence file")
        for name in ("office.toml", "greeting.wav"):
            inside = f"{STACK}routing/example/{name}"
            if inside not in names:
                fail(f"{wheel.name} has no {inside}: the demo and init need it")
            if whl.read(inside) != (repo / "examples" / name).read_bytes():
                fail(f"{wheel.name}: {inside} is not examples/{name}")
        sources = {
            f"{STACK}{path}" if not path.startswith("durchwahl/") else path
            for path in tracked
            if path.endswith(".py") and path.split("/", 1)[0] in ("sipcore", "media", "routing", "durchwahl")
        }
        if sources - names:
            fail(f"{wheel.name} lacks {sorted(sources - names)[:10]}")
    print(f"{wheel.name}: installs {sorted(top)}, with the example office and the licence")


def check_installed() -> None:
    here = Path.cwd().resolve()
    for name in [*sorted(TOP_LEVEL), CLI]:
        module = importlib.import_module(name)
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(Path(sys.prefix).resolve()):
            fail(f"{name} was imported from {where}, not from the virtualenv {sys.prefix}")
        if where.is_relative_to(here):
            fail(f"{name} was imported from the current folder {here}")
    for name in {"sipcore", "media", "routing"} - TOP_LEVEL:
        if importlib.util.find_spec(name) is not None:
            fail(f"the installed package still provides the top-level name {name!r}")
    durchwahl = importlib.import_module("durchwahl")
    for name in FACADE:
        getattr(durchwahl, name)
    print(f"durchwahl {durchwahl.__version__} imported from {Path(durchwahl.__file__ or '').parent}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["archives"] and len(sys.argv) == 5:
        check_archives(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif sys.argv[1:] == ["installed"]:
        check_installed()
    else:
        fail(__doc__ or "usage")
