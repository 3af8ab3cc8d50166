"""The import graph of src/geojepa runs one way and has no cycles.

Built from the source with `ast` (nothing is imported), from every import statement: at module
level, inside functions (lazy imports still make one module depend on another) and under
``if TYPE_CHECKING:`` (a type is a dependency too). An import names the most specific module of
src/geojepa it reaches: ``from geojepa.data import schema`` → ``geojepa.data.schema``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "geojepa"

#: Layer of each subpackage / top-level module: an import may point to the same layer or a
#: lower one, never a higher one (docs: STYLE.md "Habits", data → tokenize → model → train/embed
#: → eval → explore → cli).
LAYERS: dict[str, int] = {
    # -1: helpers every layer may use; they import nothing but each other
    "geojepa.config": -1,  # the typed-config base class
    "geojepa.constants": -1,  # index names and shared defaults
    "geojepa.errors": -1,  # the error classes
    "geojepa.environment": -1,  # versions of geojepa and its dependencies
    "geojepa.interrupt": -1,  # Ctrl-C / SIGTERM handling
    "geojepa.io": -1,  # atomic writes, GeoParquet
    "geojepa.optional": -1,  # optional dependencies imported lazily, with the install hint
    "geojepa.progress": -1,  # progress bars / plain lines of long loops
    # the layers
    "geojepa.data": 0,
    "geojepa.tokenize": 1,
    "geojepa.model": 2,
    "geojepa.train": 3,
    "geojepa.embed": 3,
    "geojepa.entity_features": 3,  # the entity-feature writer of `embed_tiles`
    "geojepa.eval": 4,
    "geojepa.integrations": 5,
    "geojepa.explore": 5,
    "geojepa.api": 6,
    "geojepa.cli": 6,
    "geojepa.demo": 6,
    "geojepa.__main__": 6,
}

#: Left out of the graph: the package's own ``__init__`` only re-exports the public names
#: lazily (PEP 562) and imports them under TYPE_CHECKING for type checkers; ``cli`` reads its
#: ``__version__``.
EXEMPT = {"geojepa"}

#: Upward imports allowed on purpose: (importer, imported) → why. None today.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The most specific module of the package that ``name`` (a dotted import) reaches."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, source: str | None = None) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement of ``module`` (its
    file, or ``source``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            names = [n if _resolve(n) == n else base for n in names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                target = _resolve(name)
                if target is not None and target != module:
                    found.append((target, node.lineno))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:i]))
        if layer is not None:
            return layer
    raise KeyError(module)


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SRC.parent)}:{line}"


def import_graph() -> dict[str, dict[str, int]]:
    """importer → {imported: first line} over the package, exempt modules left out."""
    graph: dict[str, dict[str, int]] = {}
    for module in MODULES:
        if module in EXEMPT:
            continue
        edges: dict[str, int] = {}
        for target, line in _imports(module):
            if target not in EXEMPT:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, edges in graph.items():
        for target, line in edges.items():
            if _layer(target) > _layer(module) and (module, target) not in ALLOWED_UPWARD:
                bad.append(f"{_where(module, line)}: {module} (layer {_layer(module)}) imports "
                           f"{target} (layer {_layer(target)})")  # fmt: skip
    return bad


def cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    lines = []
    for component in components:
        members = set(component)
        edges = [f"{_where(a, line)} imports {b}" for a in component
                 for b, line in sorted(graph[a].items()) if b in members]  # fmt: skip
        lines.append(" <-> ".join(component) + ": " + "; ".join(edges))
    return lines


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in MODULES:
        if module in EXEMPT:
            continue
        try:
            _layer(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    bad = upward_imports(import_graph())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checks_report_a_lazy_upward_import_and_its_cycle() -> None:
    """The checks themselves, on the circle this test was written against: a lazy import of
    train/ inside a method of model/jepa.py (train/export.py importing model/jepa.py back)."""
    lazy = "class GeoJEPA:\n    def load(self):\n        from geojepa.train.export import x\n"
    found = _imports("geojepa.model.jepa", lazy)
    assert found == [("geojepa.train.export", 3)]
    graph = {"geojepa.model.jepa": dict(found), "geojepa.train.export": {"geojepa.model.jepa": 31}}
    bad = upward_imports(graph)
    assert bad == ["src/geojepa/model/jepa.py:3: geojepa.model.jepa (layer 2) imports "
                   "geojepa.train.export (layer 3)"]  # fmt: skip
    assert cycles(graph) == [
        "geojepa.model.jepa <-> geojepa.train.export: src/geojepa/model/jepa.py:3 imports "
        "geojepa.train.export; src/geojepa/train/export.py:31 imports geojepa.model.jepa"
    ]


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("from geojepa.data import schema", "geojepa.data.schema"),
        ("from geojepa.train.export import load_model", "geojepa.train.export"),
        ("import geojepa.model.jepa", "geojepa.model.jepa"),
        ("from geojepa.explore import make_map", "geojepa.explore"),
        ("from . import tags", "geojepa.data.tags"),
        ("from ..errors import InputError", "geojepa.errors"),
    ],
)
def test_an_import_names_the_module_it_reaches(statement: str, expected: str) -> None:
    assert _imports("geojepa.data.reader", statement) == [(expected, 1)]
