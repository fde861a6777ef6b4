"""The package's shape: no import cycle between her2scope modules, output names spelled once.

Imports are read with ``ast`` from every module of ``src/her2scope``, at module level and inside
functions (a function-level import is still a dependency; it only runs later), including
``TYPE_CHECKING`` blocks. A cycle is a strongly connected component of that graph with more than
one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import her2scope

SRC = Path(her2scope.__file__).resolve().parent
PKG = "her2scope"


def module_name(path: Path, root: Path = SRC, pkg: str = PKG) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _target(name: str, modules: set[str]) -> str | None:
    """The module an imported dotted name lives in (``a.b.func`` → ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(source: str, module: str, modules: set[str], is_package: bool) -> set[str]:
    """her2scope modules that ``source`` (the text of ``module``) imports, anywhere in the file."""
    out: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from a.b import c``: module a.b.c when c is one, else a.b
            names = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            t = _target(n, modules)
            if t is not None and t != module:
                out.add(t)
    return out


def import_graph(root: Path = SRC, pkg: str = PKG) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root, pkg) for f in files}
    return {
        module_name(f, root, pkg): imports_of(
            f.read_text(encoding="utf-8"), module_name(f, root, pkg), modules, f.stem == "__init__"
        )
        for f in files
    }


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# ---- the finder itself ------------------------------------------------------------------------


def test_find_cycles_on_a_tiny_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_at_every_level(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import f\n")
    (pkg / "a.py").write_text("def g():\n    from pkg.sub.b import f\n    return f\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"}  # function-level import, name inside a module
    assert graph["pkg.sub.b"] == {"pkg.a"}  # TYPE_CHECKING import
    assert graph["pkg.sub"] == {"pkg.sub.b"}  # relative import from a package
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b"]]


# ---- the package ------------------------------------------------------------------------------


def test_no_import_cycle_in_her2scope() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles between her2scope modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


# ---- output file names ------------------------------------------------------------------------


def output_file_names() -> dict[str, str]:
    """The layout's file-name constants (``RESULTS_JSON`` → ``results.json``)."""
    import her2scope.layout as layout

    exts = (".json", ".jsonl", ".parquet", ".csv", ".html", ".yaml", ".md", ".png")
    return {
        k: v
        for k, v in vars(layout).items()
        if k.isupper() and isinstance(v, str) and v.endswith(exts)
    }


def spellings(root: Path = SRC) -> dict[str, set[str]]:
    """module → the layout's file names it spells as a string literal (outside layout.py)."""
    names = set(output_file_names().values())
    found: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        if f.name == "layout.py" and f.parent == root:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.setdefault(module_name(f, root), set()).add(str(node.value))
    return found


def test_output_file_names_are_spelled_only_in_the_layout() -> None:
    found = spellings()
    assert found == {}, f"use her2scope.layout instead of spelling these names: {found}"


def test_the_spelling_check_sees_a_literal(tmp_path: Path) -> None:
    (tmp_path / "stage.py").write_text('def f(d):\n    return d / "results.json"\n')
    assert spellings(tmp_path) == {"her2scope.stage": {"results.json"}}
