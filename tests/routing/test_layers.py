"""The layering of the code, read from the imports (an AST walk, as tests/sipcore/test_purity.py does).

The import rule: ``server`` (and the CLI, the control socket, the demo) → ``b2bua`` → ``transfer`` →
``calls`` → the base modules of ``routing`` (directory, resolver, registrar, CDR, events …) → ``sipcore`` and
``media``. Nothing imports upwards, routing's modules form no import cycle (imports under ``TYPE_CHECKING``
aside), its pure policy modules import no I/O or clock, and no routing module outgrows 800 lines (flows
belong in small modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sipcore", "media", "routing")
#: Rank of a module in the import rule: a module may import only modules of its rank or below.
TOP = {
    "durchwahl.routing.server": 5,
    "durchwahl.routing.cli": 5,
    "durchwahl.routing.control": 5,
    "durchwahl.routing.demo": 5,
    "durchwahl.routing.b2bua": 4,
}
#: Policy modules of routing that take the time as an argument and touch no socket.
PURE = (
    "durchwahl.routing.resolver",
    "durchwahl.routing.dialstring",
    "durchwahl.routing.directory",
    "durchwahl.routing.collector",
    "durchwahl.routing.ringgroup",
    "durchwahl.routing.security",
    "durchwahl.routing.emergency",
    "durchwahl.routing.challenge_watch",
    "durchwahl.routing.cluster",
    "durchwahl.routing.config_check",
    "durchwahl.routing.transfer.refer",
    "durchwahl.routing.calls.records",
    "durchwahl.routing.calls.describe",
    "durchwahl.routing.admission",
    "durchwahl.routing.server_keys",
)
IO = {"asyncio", "socket", "time", "selectors", "threading", "pyee"}
MAX_LINES = 800


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("durchwahl", *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _rank(module: str) -> int:
    if module in TOP:
        return TOP[module]
    if module.startswith("durchwahl.routing.transfer"):
        return 3
    if module.startswith("durchwahl.routing.calls"):
        return 2
    return 1 if module.startswith("durchwahl.routing") else 0


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                for sub in ast.walk(inner):
                    hidden.add(id(sub))
    return hidden


def imports(module: str) -> set[str]:
    """The modules of ``sipcore``, ``media`` and ``routing`` that ``module`` imports at run time."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    hidden = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                found.add(candidate if candidate in MODULES else prefix)
    return {name for name in found if name in MODULES}


def test_the_layout_is_there() -> None:
    for module in (
        "durchwahl.routing.calls.ringing",
        "durchwahl.routing.calls.services",
        "durchwahl.routing.transfer.refer",
        "durchwahl.routing.b2bua",
    ):
        assert module in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upwards(module: str) -> None:
    rank = _rank(module)
    above = sorted(name for name in imports(module) if _rank(name) > rank)
    assert not above, f"{module} (layer {rank}) imports {above} from above it"


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith(("durchwahl.sipcore", "durchwahl.media")))
)
def test_the_stack_knows_nothing_of_routing_and_media_nothing_of_sip(module: str) -> None:
    imported = imports(module)
    assert not {name for name in imported if name.startswith("durchwahl.routing")}, module
    if module.startswith("durchwahl.media"):
        assert not {name for name in imported if name.startswith("durchwahl.sipcore")}, module


def test_calls_never_import_transfer_or_b2bua() -> None:
    for module in (
        m for m in MODULES if m.startswith(("durchwahl.routing.calls", "durchwahl.routing.transfer"))
    ):
        imported = imports(module)
        assert "durchwahl.routing.b2bua" not in imported, module
        if module.startswith("durchwahl.routing.calls"):
            assert not {name for name in imported if name.startswith("durchwahl.routing.transfer")}, module


def test_routing_has_no_import_cycle() -> None:
    graph = {
        m: {n for n in imports(m) if n.startswith("durchwahl.routing")}
        for m in MODULES
        if m.startswith("durchwahl.routing")
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in graph or nxt == node or nxt == node.rpartition(".")[0]:
                continue  # a package importing from its own modules (__init__ re-exports) is no cycle
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", PURE)
def test_routing_policy_modules_are_pure(module: str) -> None:
    path = MODULES[module]
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & IO, f"{module} imports {sorted(roots & IO)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("durchwahl.routing")))
def test_no_routing_module_outgrows_800_lines(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"
