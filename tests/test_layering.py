"""The package's structure, read with ``ast`` (nothing is imported).

* Layers: data flows facade → runtime → transport. No module of ``transport/`` imports the
  runtime or the facade; no module of ``runtime/`` imports the facade; no module of ``observe/``
  (the live view) imports the runtime or the facade; ``core/`` imports nothing
  from ``stdlib``, ``backends`` or ``helpers``. These hold for every import, including those
  under ``if TYPE_CHECKING:`` (a type-only import may go anywhere that is not upward).
* No import cycle between the package's modules, counting imports at module level and inside
  functions; imports under ``if TYPE_CHECKING:`` are left out (they never run).
* ``call_soon_threadsafe`` is called only in ``runtime/crossing.py``.
* Private names of pykka and ollama are used only in ``_compat.py``.
* Module file names are unique across the subpackages (but for the allowed ones listed below).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mellea_actors"
FACADE = ("core", "stdlib", "backends", "helpers")

#: ``mellea_actors/testing/`` is the scripted Ollama server: a stand-alone program with its own
#: event loop that imports nothing from the engine, so the rule "hand-offs only through
#: runtime/crossing.py" does not apply to it (it would have to import the runtime to obey it).
CROSSING_RULE_EXEMPT = ("mellea_actors.testing",)

#: File names that may occur in more than one subpackage: paths dictated by Mellea's public API
#: (SPEC §1), where two Mellea modules share a name.
ALLOWED_DUPLICATE_NAMES: dict[str, set[str]] = {
    # Mellea 0.7 ``mellea.stdlib.chunking`` and Mellea 0.8 ``mellea.core.chunking`` (SPEC §1)
    "chunking.py": {"stdlib/chunking.py", "core/chunking.py"},
}


@dataclass(frozen=True)
class Import:
    target: str  # the imported module, resolved to a module of the package when it is one
    line: int
    where: str  # "module", "function" or "type_checking"
    names: tuple[str, ...] = ()  # for ``from x import a, b``: a, b


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found[module_name(path)] = Module(module_name(path), path, tree)
    return found


def resolve(target: str) -> str:
    """A dotted name → the longest prefix that is a module of the package (or itself)."""
    known = modules()
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return target


def is_type_checking_test(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "TYPE_CHECKING") or (
        isinstance(node, ast.Attribute) and node.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: Module) -> None:
        self.module = module
        self.package = (
            module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
        )
        self.imports: list[Import] = []
        self._functions = 0
        self._type_checking = 0

    @property
    def _where(self) -> str:
        if self._type_checking:
            return "type_checking"
        return "function" if self._functions else "module"

    def _function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking_test(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(resolve(alias.name), node.lineno, self._where))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the current package upwards
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        names = tuple(alias.name for alias in node.names)
        for name in names:
            full = f"{base}.{name}"
            target = full if full in modules() else resolve(base)
            self.imports.append(Import(target, node.lineno, self._where, names))


@cache
def imports_of(name: str) -> tuple[Import, ...]:
    collector = _ImportCollector(modules()[name])
    collector.visit(modules()[name].tree)
    return tuple(collector.imports)


def in_package(name: str, *subpackages: str) -> bool:
    return any(
        name == f"mellea_actors.{s}" or name.startswith(f"mellea_actors.{s}.") for s in subpackages
    )


def modules_under(*subpackages: str) -> list[str]:
    return [name for name in modules() if in_package(name, *subpackages)]


def sanity() -> None:
    assert "mellea_actors.runtime.crossing" in modules()
    assert len(modules()) > 30


# -- layers ---------------------------------------------------------------------------------------
def upward(name: str, forbidden: tuple[str, ...], *, top: bool) -> list[str]:
    """The imports of module ``name`` that reach into ``forbidden`` subpackages."""
    bad = []
    for imp in imports_of(name):
        hits_top = top and imp.target in (
            "mellea_actors",
            "mellea_actors.cli",
            "mellea_actors.__main__",
        )
        if in_package(imp.target, *forbidden) or hits_top:
            bad.append(f"{modules()[name].rel}:{imp.line} imports {imp.target} ({imp.where})")
    return bad


def test_the_import_collector_classifies_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import mellea_actors.runtime.loop\n"
        "from mellea_actors.runtime import messages, RestartPolicy\n"
        "from . import crossing\n"
        "from ..core.message import Message\n"
        "if TYPE_CHECKING:\n"
        "    from mellea_actors.stdlib.session import MelleaSession\n"
        "else:\n"
        "    import mellea_actors.errors\n"
        "def f():\n"
        "    from mellea_actors.backends import ModelOption\n"
    )
    fake = Module("mellea_actors.runtime.fake", PACKAGE / "runtime" / "fake.py", ast.parse(source))
    collector = _ImportCollector(fake)
    collector.visit(fake.tree)
    got = [(i.target, i.where) for i in collector.imports if i.target.startswith("mellea")]
    assert got == [
        ("mellea_actors.runtime.loop", "module"),
        ("mellea_actors.runtime.messages", "module"),
        ("mellea_actors.runtime", "module"),  # a name re-exported by the package's __init__
        ("mellea_actors.runtime.crossing", "module"),
        ("mellea_actors.core.message", "module"),
        ("mellea_actors.stdlib.session", "type_checking"),
        ("mellea_actors.errors", "module"),
        ("mellea_actors.backends", "function"),
    ]


def test_the_package_was_read() -> None:
    sanity()
    assert modules_under("transport") and modules_under("runtime") and modules_under("core")


@pytest.mark.parametrize("name", modules_under("transport"))
def test_transport_imports_neither_the_runtime_nor_the_facade(name: str) -> None:
    bad = upward(name, ("runtime", *FACADE), top=True)
    assert not bad, "the transport is the bottom layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", modules_under("runtime"))
def test_runtime_imports_nothing_of_the_facade(name: str) -> None:
    bad = upward(name, FACADE, top=True)
    assert not bad, "the runtime never imports the facade:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", modules_under("observe"))
def test_observe_imports_neither_the_runtime_nor_the_facade(name: str) -> None:
    """The live view (``observe/``) reads the runtime through the source object the runtime
    hands it (``observe.LiveSource``): it imports nothing of the runtime or the facade."""
    bad = upward(name, ("runtime", *FACADE), top=True)
    assert not bad, "observe is handed its source; it imports no engine:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", modules_under("core"))
def test_core_imports_nothing_of_stdlib_backends_or_helpers(name: str) -> None:
    bad = upward(name, ("stdlib", "backends", "helpers"), top=True)
    assert not bad, "core is below stdlib/backends/helpers:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["mellea_actors.errors", "mellea_actors._compat"])
def test_errors_and_compat_import_nothing_of_the_package(name: str) -> None:
    inner = [
        i
        for i in imports_of(name)
        if i.target.split(".")[0] == "mellea_actors" and i.target != "mellea_actors.errors"
    ]
    assert not inner, f"{name} is below everything: {inner}"


# -- cycles ---------------------------------------------------------------------------------------
def import_graph(*, type_checking: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name in modules():
        for imp in imports_of(name):
            if imp.where == "type_checking" and not type_checking:
                continue
            if imp.target in modules() and imp.target != name:
                graph[name].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(graph) | {w for targets in graph.values() for w in targets}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph(type_checking=False)
    assert sum(len(t) for t in graph.values()) > 50  # the graph was built
    found = cycles(graph)
    detail = []
    for component in found:
        members = set(component)
        for name in component:
            for imp in imports_of(name):
                if imp.target in members and imp.where != "type_checking":
                    detail.append(
                        f"  {modules()[name].rel}:{imp.line} → {imp.target} ({imp.where})"
                    )
    assert not found, f"import cycles: {found}\n" + "\n".join(detail)


def test_a_cycle_is_detected() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- call_soon_threadsafe -------------------------------------------------------------------------
def attribute_uses(name: str, attr: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(modules()[name].tree)
        if isinstance(node, ast.Attribute) and node.attr == attr
    ]


CROSSING = "mellea_actors.runtime.crossing"


def test_crossing_is_where_call_soon_threadsafe_is() -> None:
    assert attribute_uses(CROSSING, "call_soon_threadsafe"), "the rule would test nothing"


@pytest.mark.parametrize(
    "name", [n for n in modules() if n != CROSSING and not in_package(n, "testing")]
)
def test_call_soon_threadsafe_only_in_crossing(name: str) -> None:
    lines = attribute_uses(name, "call_soon_threadsafe")
    where = ", ".join(f"{modules()[name].rel}:{n}" for n in lines)
    assert not lines, f"call_soon_threadsafe outside runtime/crossing.py: {where}"


def test_the_testing_exemption_is_still_needed() -> None:
    """``testing/`` is exempt from the crossing rule only while it is independent of the engine."""
    for name in modules_under("testing"):
        engine = [i for i in imports_of(name) if in_package(i.target, "runtime", *FACADE)]
        assert not engine, f"{name} imports the engine; it should use runtime.crossing then"


# -- private names of pykka and ollama ------------------------------------------------------------
PRIVATE_MODULES = ("pykka._", "ollama._")
PRIVATE_NAMES = {"_ActorStop", "_parse_host", "_handle_receive", "_threading", "_envelope"}


def docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of string constants that are docstrings or bare string statements."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def private_uses(name: str) -> list[str]:
    module = modules()[name]
    found = []
    for imp in imports_of(name):
        if imp.target.startswith(PRIVATE_MODULES):
            found.append(f"line {imp.line}: imports {imp.target}")
        if imp.target.startswith(("pykka", "ollama")):
            for n in imp.names:
                if n.startswith("_"):
                    found.append(f"line {imp.line}: from {imp.target} import {n}")
    skip = docstring_nodes(module.tree)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_NAMES:
                found.append(f"line {node.lineno}: .{node.attr}")
            # ``client._client``: the ollama client's httpx client (``self._client`` is ours)
            if node.attr == "_client" and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id in PRIVATE_NAMES:
            found.append(f"line {node.lineno}: {node.id}")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and any(p in node.value for p in ("pykka._", "ollama._"))
        ):
            found.append(f"line {node.lineno}: the string {node.value!r}")
    return list(dict.fromkeys(found))


COMPAT = "mellea_actors._compat"


def test_compat_is_where_the_private_names_are() -> None:
    assert len(private_uses(COMPAT)) >= 5, "the detector finds nothing: it would test nothing"


@pytest.mark.parametrize("name", [n for n in modules() if n != COMPAT])
def test_private_names_of_dependencies_only_in_compat(name: str) -> None:
    found = private_uses(name)
    rel = modules()[name].rel
    assert not found, f"{rel} uses pykka/ollama internals (move them to _compat.py): {found}"


# -- file names ------------------------------------------------------------------------------------
def test_module_file_names_are_unique() -> None:
    by_name: dict[str, set[str]] = defaultdict(set)
    for module in modules().values():
        if module.path.name in ("__init__.py", "__main__.py"):
            continue
        by_name[module.path.name].add(module.path.relative_to(PACKAGE).as_posix())
    duplicates = {
        file: paths
        for file, paths in by_name.items()
        if len(paths) > 1 and not paths <= ALLOWED_DUPLICATE_NAMES.get(file, set())
    }
    assert not duplicates, f"module names used twice: {duplicates}"
