"""The example third-party plugin package: registered like an installed one and used in a recipe."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_recipe

EXAMPLE = REPO / "examples" / "clustkit-plugin-example"


@pytest.fixture
def example_module():
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("clustkit_example")
    finally:
        sys.path.remove(str(EXAMPLE))


def test_entry_point_is_declared() -> None:
    import tomllib

    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["clustkit"] == {"example": "clustkit_example"}


def test_align_uniform_matches_naive_formula(example_module) -> None:
    from clustkit_example.loss import align_uniform

    g = torch.Generator().manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    zb = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    align = sum(float((za[i] - zb[i]).norm() ** 2) for i in range(5)) / 5

    def uniform(z: torch.Tensor) -> float:
        vals = [float(torch.exp(-2 * (z[i] - z[j]).norm() ** 2)) for i in range(5) for j in range(5) if i < j]
        return float(torch.log(torch.tensor(sum(vals) / len(vals), dtype=torch.float64)))

    expected = align + (uniform(za) + uniform(zb)) / 2
    assert float(align_uniform(za, zb)) == pytest.approx(expected, rel=1e-10)


def test_example_plugin_runs_in_a_recipe(example_module, plugin_set, tmp_path: Path) -> None:
    ps = plugin_set(("example", example_module))
    assert ("loss", "align_uniform") in {(s.kind, s.name) for s in ps.registry.by_plugin("example")}
    recipe = tmp_path / "r.toml"
    text = (EXAMPLE / "recipe.toml").read_text().replace("epochs = 150", "epochs = 1")
    recipe.write_text(text.replace('name = "small_cnn"', 'name = "small_cnn"\nwidth = 8\nout_dim = 32'))
    summary = run_recipe(recipe, ps, tmp_path / "run")
    assert summary["plugins"]["example"] is None or isinstance(summary["plugins"]["example"], str)
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "uniform" in final["losses"] and 0 <= summary["acc"] <= 1
