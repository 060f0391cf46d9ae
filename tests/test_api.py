"""The public API is what docs/api.md says: the contexts' public members are exactly the documented
ones, every plugin (built-in, shipped, example) reaches only documented members, the types that
components return have their sections, and every core recipe key is in docs/recipes.md."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from conftest import REPO

API = (REPO / "docs" / "api.md").read_text()
PLUGIN_FILES = sorted([*(REPO / "plugins").rglob("*.py"), *(REPO / "core" / "clustkit" / "builtin").rglob("*.py"),
                       *(REPO / "examples").rglob("*.py")])


def section(heading: str, text: str = API) -> str:
    """The text of the ``## heading...`` section, up to the next ``## ``."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def documented(heading: str) -> set[str]:
    """The names in the first column of the tables of a section (``name(args)`` counts as ``name``)."""
    names = set()
    for line in section(heading).splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= {re.match(r"\w+", n).group(0) for n in re.findall(r"`([^`]+)`", first)}
    return names


def public_members(cls: type) -> set[str]:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {n for n in (set(dir(cls)) | fields) if not n.startswith("_")}


def test_run_context_has_exactly_the_documented_members() -> None:
    from clustkit import RunContext

    assert public_members(RunContext) == documented("RunContext")


def test_build_context_has_exactly_the_documented_members() -> None:
    from clustkit import BuildContext

    assert public_members(BuildContext) == documented("BuildContext")


def test_step_outputs_has_exactly_the_documented_members() -> None:
    from clustkit import StepOutputs

    out = StepOutputs(None, None, None, None, {})  # what __init__ sets is part of it too
    assert {n for n in dir(out) if not n.startswith("_")} == documented("StepOutputs")


@pytest.mark.parametrize("name", ["Prediction", "KMeansResult"])
def test_the_returned_types_document_every_field(name: str) -> None:
    import clustkit

    cls = getattr(clustkit, name)
    fields = {f.name for f in dataclasses.fields(cls) if not isinstance(f.type, str) or "InitVar" not in f.type}
    assert fields - {"source"} <= documented(name)


def _context_reads(path: Path) -> list[tuple[int, str, str]]:
    """(line, object, attribute) of every ``ctx.x`` and ``out.x`` a plugin file reads."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("ctx", "out"):
            found.append((node.lineno, node.value.id, node.attr))
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_reach_only_documented_members(path: Path) -> None:
    allowed = {"ctx": documented("RunContext") | documented("BuildContext"), "out": documented("StepOutputs")}
    bad = [f"line {line}: {obj}.{attr}" for line, obj, attr in _context_reads(path) if attr not in allowed[obj]]
    assert not bad, f"{path.relative_to(REPO)} reaches undocumented members: " + ", ".join(bad)


def test_a_removed_member_says_what_replaced_it(tmp_path: Path, plugin_set, tiny_recipe: Path) -> None:
    from clustkit.engine.build import build_run
    from clustkit.recipe import load

    ps = plugin_set()
    ctx = build_run(load(tiny_recipe, ps.registry), ps, None).ctx
    with pytest.raises(AttributeError, match=r"recipe_evaluation was removed in clustkit 0.2: use ctx.evaluate\(\)"):
        ctx.recipe_evaluation()
    with pytest.raises(AttributeError, match="make_views"):
        ctx.hook.make_views(images=None, train=True, ctx=ctx)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = ctx.nonsense


def test_every_core_recipe_key_is_in_the_recipe_reference() -> None:
    from clustkit.recipe.schema import CORE_SECTIONS

    text = (REPO / "docs" / "recipes.md").read_text()
    for name, model in CORE_SECTIONS.items():
        keys = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", section(f"[{name}]", text), re.M)}
        assert keys == set(model.model_fields), name
