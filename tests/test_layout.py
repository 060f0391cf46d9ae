"""The layout's rules, checked: folders are import names, the wheel holds every package, plugins use
only the public API, the core never imports a plugin, and a built run context has no hole."""

from __future__ import annotations

import ast
import dataclasses
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY_CC

ROOTS = ("core", "plugins")
# Library modules a plugin may import besides the top-level ``clustkit`` API (docs/api.md).
PUBLIC = ("clustkit.nn", "clustkit.losses", "clustkit.cluster", "clustkit.data", "clustkit.dist")
# What counts as plugin code: the shipped method plugins, the built-in plugin, the example package.
PLUGIN_FILES = sorted([*(REPO / "plugins").rglob("*.py"), *(REPO / "core" / "clustkit" / "builtin").rglob("*.py"),
                       *(REPO / "examples").rglob("*.py")])


def packages() -> list[str]:
    """Every folder below core/ and plugins/ that holds Python files, as a dotted name."""
    names = set()
    for root in ROOTS:
        for py in (REPO / root).rglob("*.py"):
            names.add(".".join(py.parent.relative_to(REPO / root).parts))
    return sorted(names)


def test_every_folder_is_a_package_named_as_it_is_imported() -> None:
    for root in ROOTS:
        for py in (REPO / root).rglob("*.py"):
            parts = py.parent.relative_to(REPO / root).parts
            assert parts, f"{py}: a module directly under {root}/ has no package"
            for i in range(1, len(parts) + 1):
                init = REPO / root / Path(*parts[:i]) / "__init__.py"
                assert init.is_file(), f"{init.parent} holds Python files but is not a package"
    top = {name.split(".")[0] for name in packages()}
    assert top == {"clustkit", "clustkit_cc", "clustkit_sacc", "clustkit_dchl", "clustkit_digpro", "clustkit_iciclegcn",
                   "clustkit_selflabel", "clustkit_manifold", "clustkit_temi"}


def test_pyproject_lists_no_packages_and_maps_no_folders() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in setuptools
    assert set(setuptools) <= {"packages", "package-data"} and set(setuptools["packages"]) == {"find"}
    assert setuptools["packages"]["find"]["where"] == list(ROOTS)
    # the only package data: the shipped recipes (tests/test_shipped_recipes.py)
    assert setuptools.get("package-data", {}) == {"clustkit.recipe": ["shipped/**/*.toml"]}


@pytest.mark.slow
def test_the_wheel_holds_every_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for root in ROOTS:
        shutil.copytree(REPO / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("clustkit-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in packages() if f"{p.replace('.', '/')}/__init__.py" not in inside]
    assert not missing, f"not in the wheel: {missing}"
    modules = {f"{py.relative_to(REPO / root).as_posix()}" for root in ROOTS for py in (REPO / root).rglob("*.py")}
    assert modules <= inside


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "clustkit":  # `from clustkit import nn` imports a module
                found += [(node.lineno, f"clustkit.{a.name}") for a in node.names
                          if (REPO / "core" / "clustkit" / a.name).exists()
                          or (REPO / "core" / "clustkit" / f"{a.name}.py").exists()]
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    own = ("clustkit.builtin",) if "builtin" in path.parts else ()  # the built-in plugin's own modules
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}" for line, name in imports(path)
           if name.startswith("clustkit.") and not any(name == p or name.startswith(p + ".") for p in (*PUBLIC, *own))]
    assert not bad, ("plugins import only `clustkit` and its library modules " + ", ".join(PUBLIC) + ":\n"
                     + "\n".join(bad))


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_touch_no_private_attribute_and_never_write_to_a_context(path: Path) -> None:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            private = node.attr.startswith("_") and not (node.attr.startswith("__") and node.attr != "__dict__")
            if private and owner not in ("self", "cls"):
                bad.append(f"line {node.lineno}: .{node.attr}")
            if isinstance(node.ctx, ast.Store) and owner == "ctx":
                bad.append(f"line {node.lineno}: writes ctx.{node.attr}")
    assert not bad, f"{path.relative_to(REPO)}: " + "; ".join(bad)


def test_the_core_never_imports_a_plugin() -> None:
    plugin_names = {p.name for p in (REPO / "plugins").iterdir() if p.is_dir()} | {"clustkit_example"}
    for py in (REPO / "core").rglob("*.py"):
        for line, name in imports(py):
            assert name.split(".")[0] not in plugin_names, f"{py.relative_to(REPO)}:{line} imports {name}"


def test_the_public_api_resolves_without_importing_torch_first() -> None:
    code = ("import sys, clustkit\n"
            "assert 'torch' not in sys.modules\n"
            "missing = [n for n in clustkit.__all__ if getattr(clustkit, n, None) is None]\n"
            "assert not missing, missing\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_built_run_context_has_no_none_field(tmp_path: Path, plugin_set) -> None:
    from clustkit.engine.build import build_run
    from clustkit.recipe import load

    ps = plugin_set()
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CC)
    for overrides in ([], ["momentum.heads=['instance']"]):
        run = build_run(load(path, ps.registry, overrides), ps, tmp_path / "run")
        # the private momentum network is None without [momentum]; the cached views without [features]
        cached_only = {"features", "feature_cache"}
        for part in (run, run.ctx):
            empty = [f.name for f in dataclasses.fields(part) if not f.name.startswith("_")
                     and f.name not in cached_only and getattr(part, f.name) is None]
            assert not empty, empty
        assert run.ctx.has_momentum == bool(overrides)
    ctx = build_run(load(path, ps.registry), ps, None).ctx
    with pytest.raises(RuntimeError, match=r"no \[momentum\] section"):
        _ = ctx.momentum_model


def test_docs_cite_nothing_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    outside = ("methods" + ".md", "anchors" + ".md", "shared/" + "reference")  # split so this file does not match
    hits = [f for f in files if Path(f).suffix in (".py", ".md", ".toml") and (REPO / f).is_file()
            and any(s in (REPO / f).read_text(errors="replace") for s in outside)]
    assert not hits
    for method in ("cc", "sacc", "dchl", "iciclegcn", "digpro"):
        assert (REPO / "docs" / "methods" / f"{method}.md").is_file()
    for page in ("architecture.md", "api.md", "hooks.md"):
        assert (REPO / "docs" / page).is_file()


def test_every_registered_factory_and_config_resolves(plugin_set) -> None:
    """A "module:attr" string is resolved only when a recipe builds the component, so a stale
    path after a move would fail only in that recipe's run: resolve every one here."""
    from clustkit.plugin_system.registry import resolve

    specs = plugin_set().registry.all()
    assert len(specs) > 30
    for spec in specs:
        assert callable(resolve(spec.factory)), (spec.plugin, spec.kind, spec.name)
        assert spec.config_model() is not None


def test_ci_runs_the_readme_test_command_exactly() -> None:
    """The quick start's second command is what CI runs: a user who runs it sees what CI sees (the linter too)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("```bash", readme.index("## Quick start")):]
    commands = block[len("```bash"):block.index("```", 3)].strip().splitlines()
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci and "ruff check" in ci and "pytest" in ci
