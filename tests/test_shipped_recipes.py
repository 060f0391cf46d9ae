"""Recipes shipped with the wheel: `clustkit recipes`, and RECIPE given by name (`clustkit run cc`)
in run, check, views and bench, from any working directory and from an installed (non-editable)
wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY_CC, clustkit_exe

RECIPES = sorted(p.relative_to(REPO / "recipes").with_suffix("").as_posix() for p in (REPO / "recipes").rglob("*.toml"))


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([clustkit_exe(), *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the tree, the recipes symlink kept as a symlink."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for root in ("core", "plugins", "recipes"):
        shutil.copytree(REPO / root, src / root, symlinks=True, ignore=ignore)
    assert (src / "core" / "clustkit" / "recipe" / "shipped").is_symlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    (built,) = (tmp / "dist").glob("clustkit-*.whl")
    return built


def test_the_shipped_folder_is_the_recipes_folder() -> None:
    shipped = REPO / "core" / "clustkit" / "recipe" / "shipped"
    assert shipped.is_symlink() and shipped.resolve() == (REPO / "recipes").resolve()


@pytest.mark.slow
def test_the_wheel_holds_every_recipe(wheel: Path) -> None:
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in RECIPES if f"clustkit/recipe/shipped/{n}.toml" not in inside]
    assert not missing, f"not in the wheel: {missing}"
    assert {"clustkit/recipe/shipped/cc.toml", "clustkit/recipe/shipped/cifar10/sacc.toml",
            "clustkit/recipe/shipped/mix/sacc_views_dchl_losses.toml"} <= inside


@pytest.mark.slow
def test_an_installed_wheel_runs_a_shipped_recipe_by_name(wheel: Path, tmp_path: Path) -> None:
    """Installed without the source tree (pip --target, no index): `clustkit check cc` and the name
    resolution find the recipe inside the installed package, from an unrelated directory."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import sys, clustkit\n"
            "from clustkit.recipe import resolve_recipe\n"
            "print(clustkit.__file__)\n"
            "print(resolve_recipe('cifar10/cc'))\n"
            "from clustkit.cli import main\n"
            "sys.argv = ['clustkit', 'check', 'cc']\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable install's finder
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    module, recipe, *rest = result.stdout.splitlines()
    assert Path(module).is_relative_to(site), module
    assert Path(recipe) == site / "clustkit" / "recipe" / "shipped" / "cifar10" / "cc.toml"
    assert not Path(recipe).is_symlink()
    assert "ok cc" in " ".join(rest)


def test_recipes_lists_every_shipped_recipe_with_its_description(tmp_path: Path) -> None:
    data = json.loads(cli("recipes", "--json", cwd=tmp_path).stdout)
    by_name = {r["name"]: r for r in data["recipes"]}
    assert sorted(by_name) == RECIPES
    assert {"cc", "cifar10/sacc", "mix/sacc_views_dchl_losses"} <= set(by_name)
    assert by_name["cc"]["description"].startswith("CC (Contrastive Clustering) on scikit-learn's digits")
    assert by_name["cc"]["dataset"] == "digits" and by_name["cifar10/sacc"]["dataset"] == "cifar10"
    assert Path(by_name["cc"]["path"]).read_text() == (REPO / "recipes" / "cc.toml").read_text()
    table = cli("recipes", cwd=tmp_path)
    assert table.returncode == 0 and "cifar10/sacc" in table.stdout and "mix/sacc_views_dchl_losses" in table.stdout


@pytest.mark.parametrize("name", ["cc", "cifar10/cc", "mix/sacc_views_dchl_losses"])
def test_check_finds_a_shipped_recipe_by_name_from_any_directory(name: str, tmp_path: Path) -> None:
    result = cli("check", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"ok {name}" in result.stdout


def test_an_existing_file_wins_over_a_shipped_name(tmp_path: Path) -> None:
    (tmp_path / "cc").write_text(TINY_CC)  # a file called "cc" (no suffix) in the working directory
    result = cli("check", "cc", "--show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'name = "tiny"' in result.stdout


@pytest.mark.parametrize("name,close", [("ccc", "cc"), ("cifar10/sac", "cifar10/sacc"), ("cifar10", "cifar10/cc")])
def test_an_unknown_name_is_one_paragraph_with_close_matches(name: str, close: str, tmp_path: Path) -> None:
    for command in ("check", "run", "views"):
        result = cli(command, name, cwd=tmp_path)
        message = " ".join(result.stderr.split())
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 6
        assert f"no recipe '{name}'" in message and close in message and "clustkit recipes" in message
    assert not (tmp_path / "runs").exists()


def test_a_path_keeps_its_meaning(tmp_path: Path) -> None:
    """A missing path (with .toml or a folder in it) is 'file not found', never a shipped recipe."""
    for ref in ("cc.toml", "./cc", "nowhere/cc.toml"):
        result = cli("check", ref, cwd=tmp_path)
        assert result.returncode == 2 and "file not found" in result.stderr, (ref, result.stderr)


@pytest.mark.slow
def test_run_by_name_writes_runs_name_time(tmp_path: Path) -> None:
    result = cli("run", "cc", "--set", "run.epochs=1", "--set", "run.eval_every=0", "--set", "backbone.width=8",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("cc-") and (folder / "summary.json").exists()
    assert json.loads((folder / "summary.json").read_text())["method"] == "cc"


@pytest.mark.slow
def test_views_by_name(tmp_path: Path) -> None:
    result = cli("views", "cc", "--n", "2", "--out", "grid.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_bench_takes_a_shipped_name_and_bench_files_may_name_them(tmp_path: Path) -> None:
    shipped_cc = str(REPO / "core" / "clustkit" / "recipe" / "shipped" / "cc.toml")
    quick = cli("bench", "cc", "--dry-run", "--seeds", "0", "--out", "b1", cwd=tmp_path)
    assert quick.returncode == 0, quick.stderr
    assert "shipped/cc.toml" in quick.stdout
    (tmp_path / "local.toml").write_text(TINY_CC)
    (tmp_path / "bench.toml").write_text('[bench]\nrecipes = ["local.toml", "cc", "mix/sacc_views_dchl_losses"]\n'
                                         'seeds = [0]\n')
    planned = cli("bench", "bench.toml", "--dry-run", "--out", "b2", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert not (tmp_path / "b2").exists()
    from clustkit.bench.plan import build_plan

    plan = build_plan(tmp_path / "bench.toml", [], None, [])
    assert [str(r.path) for r in plan.recipes] == [str(tmp_path / "local.toml"), shipped_cc,
                                                   shipped_cc.replace("cc.toml", "mix/sacc_views_dchl_losses.toml")]
    (tmp_path / "bad.toml").write_text('[bench]\nrecipes = ["local.toml", "ccc"]\n')
    bad = cli("bench", "bad.toml", "--dry-run", cwd=tmp_path)
    message = " ".join(bad.stderr.split())
    assert bad.returncode == 2 and "'bench.recipes[1]'" in message and "no recipe 'ccc'" in message


@pytest.mark.parametrize("dataset", ["fashion_mnist", "kmnist"])
def test_other_28px_grey_recipes_are_mnists_with_data_swapped(dataset: str) -> None:
    """Their headers say so, and nothing was tuned on them: only [data] and run.name may differ."""
    import tomllib

    def read(name: str) -> dict:
        with open(REPO / "recipes" / name / "sacc.toml", "rb") as f:
            recipe = tomllib.load(f)
        recipe["run"].pop("name")
        return recipe

    mnist, other = read("mnist"), read(dataset)
    assert other.pop("data")["name"] == dataset and mnist.pop("data")["name"] == "mnist"
    assert other == mnist
