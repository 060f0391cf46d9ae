"""Every import inside ``clustkit`` follows the layer order of docs/architecture.md, and no two
modules import each other, directly or around a loop. Imports inside functions count (they run);
imports under ``if TYPE_CHECKING:`` do not (they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

CORE = REPO / "core" / "clustkit"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the clustkit package (a package is its __init__)."""
    found = {}
    for py in CORE.rglob("*.py"):
        parts = ("clustkit", *py.relative_to(CORE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = py
    return found


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The clustkit modules ``path`` imports when it runs (``from a import b``: the module a.b when it
    is one, else a)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= subs
            if len(subs) < len(node.names):
                out.add(node.module)
    resolved = set()
    for name in out:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("clustkit"):
            resolved.add(name)
    return resolved


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imported(p, known) - {m} for m, p in known.items()}


def layers() -> dict[str, int]:
    """Top-level part of clustkit -> its layer, from the block in docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text[text.index("```layers"):]
    block = block[block.index("\n") + 1:block.index("```", 10)]
    out = {}
    for line in block.splitlines():
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if m:
            for part in m.group(2).split("#")[0].split():
                out[part] = int(m.group(1))
    return out


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "clustkit"


def test_every_package_of_clustkit_has_a_layer() -> None:
    assert {part(m) for m in modules()} == set(layers())


def test_no_import_goes_up_the_layers() -> None:
    layer = layers()
    upward = [f"{m} imports {d} ({part(m)}: layer {layer[part(m)]}, {part(d)}: layer {layer[part(d)]})"
              for m, deps in graph().items() for d in deps if layer[part(d)] > layer[part(m)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_check_sees_lazy_imports_and_skips_typing_only_ones(tmp_path: Path) -> None:
    """The walk itself: an import inside a function is an edge; one under TYPE_CHECKING is not."""
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clustkit.engine import run\n"
                    "def f():\n    from clustkit.cluster import kmeans\n")
    assert imported(path, modules()) == {"clustkit.cluster.kmeans"}
