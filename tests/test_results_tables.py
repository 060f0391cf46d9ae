"""The results pages equal what the committed bench reports say (benchmarks/tables.py)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tables(root: Path = REPO) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tables_{abs(hash(root))}", root / "benchmarks" / "tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_results_and_readme_tables_equal_the_reports() -> None:
    tables = load_tables()
    assert tables.stale() == []
    names = [m.group("name") for doc in tables.DOCS.values() for m in tables.BLOCK.finditer(doc.read_text())]
    assert "headline" in names and "papers" in names and "ablations" in names
    assert {f"recipes-{d}" for d in ("digits", "usps", "mnist", "coil20", "cifar10")} <= set(names)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """The parts of the repository tables.py reads, copied so a test may change them."""
    for name in ("README.md", "docs/pretrained.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "*.png"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


def test_a_changed_report_makes_its_tables_stale_and_the_generator_rewrites_them(copy: Path) -> None:
    tables = load_tables(copy)
    spec = tomllib.loads((copy / "benchmarks" / "tables.toml").read_text())
    row = next(r for r in spec["row"] if r["recipe"] == "recipes/mnist/sacc.toml")
    report = copy / "benchmarks" / row["report"]
    text = report.read_text()
    cell = re.escape(row["cell"])
    line = re.search(rf"^\| `{cell}` \| \d+/\d+ \| (\S+ ± \S+) \|.*$", text, re.M)
    assert line, "the cell's overview row"
    old = line.group(1)
    report.write_text(text.replace(line.group(0), line.group(0).replace(old, "0.123 ± 0.004", 1)))
    stale = tables.stale()
    assert "RESULTS: recipes-mnist" in stale and "README: headline" in stale
    assert tables.main([]) == 0
    assert tables.stale() == []
    results = (copy / "benchmarks" / "RESULTS.md").read_text()
    assert "0.123 ± 0.004" in results and old not in results.split("### MNIST")[1].split("### COIL-20")[0]


def test_a_row_naming_a_cell_that_ran_another_recipe_is_refused(copy: Path) -> None:
    spec_path = copy / "benchmarks" / "tables.toml"
    spec_path.write_text(spec_path.read_text().replace('cell = "mnist-cc"', 'cell = "mnist-dchl"', 1))
    tables = load_tables(copy)
    with pytest.raises(ValueError, match="ran recipes/mnist/dchl.toml, not recipes/mnist/cc.toml"):
        tables.load_spec(spec_path)


def test_every_recipe_appears_in_a_table_and_none_is_left_blank() -> None:
    tables = load_tables()
    _, rows = tables.load_spec()
    listed = {r.recipe for r in rows} | {p["recipe"] for p in tables.paper_recipes()}
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "recipes").rglob("*.toml")}
    examples = {"recipes/webdataset/cc.toml"}  # a storage example at another recipe's settings, no protocol
    assert shipped - examples == listed
    for r in rows:
        assert r.report or r.note, r.recipe


def test_each_paper_recipe_header_states_the_figure_papers_toml_prints() -> None:
    tables = load_tables()
    papers = tables.paper_recipes()
    assert len(papers) == 23
    for p in papers:
        pub = p["published"]
        for key, name in (("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI")):
            shown = f"{name} {pub[key]:.3f}" if key in pub else f"{name} n/a"
            assert shown in p["paper"], (p["recipe"], shown, p["paper"])
        assert pub["source"] in p["paper"]
        assert p["clustkit"].startswith(("not run", "run")), p["recipe"]
        assert "epochs" in p["protocol"] and "px" in p["protocol"] and "evaluated on" in p["protocol"]
