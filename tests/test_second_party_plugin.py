"""A third-party plugin in one loose file (tests/plugins/second_party.py), used as a user would:
``clustkit run`` with ``CLUSTKIT_PLUGINS_DIR``, then ``clustkit predict`` on PNGs of the dataset.

One tiny digits run (2 epochs) with all four of the plugin's parts: the ``spectral`` grouper, the
``spectral_eval`` evaluator, the ``balance`` loss and its ``on_epoch_end`` logging.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY_CC
from test_cli import cli

PLUGIN = REPO / "tests" / "plugins" / "second_party.py"
WEIGHT = 0.5
N_PNG = 6

EVALUATION = '[evaluation]\nname = "head_argmax"\nhead = "cluster"\n'
EXTRA = f"""[losses.balance]
name = "balance"
weight = {WEIGHT}
temperature = 1.0

[grouping]
name = "spectral"
n_neighbors = 10

[evaluation]
name = "spectral_eval"
features = "backbone"
"""


def recipe_text() -> str:
    assert EVALUATION in TINY_CC, "TINY_CC changed: update this test's recipe"
    text = TINY_CC.replace(EVALUATION, EXTRA)
    # the recipe's own evaluation is the output, so that predict uses spectral_eval's placement
    return text.replace("[run]\n", '[run]\nselect = "recipe"\nplugins = ["second_party"]\n', 1)


def plugin_env(plugin_dir: Path) -> dict[str, str]:
    env = {"CLUSTKIT_PLUGINS_DIR": str(plugin_dir)}
    if os.environ.get("CLUSTKIT_LOAD_PLUGINS"):  # conftest limits the entry-point plugins; name ours too
        env["CLUSTKIT_LOAD_PLUGINS"] = os.environ["CLUSTKIT_LOAD_PLUGINS"] + ",second_party"
    return env


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run and one predict, shared by the tests below (each checks one behaviour)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("second_party")
    plugin_dir = root / "plugins"  # only this file: tests/plugins/ also holds recorder.py
    plugin_dir.mkdir()
    shutil.copy(PLUGIN, plugin_dir / PLUGIN.name)
    env = plugin_env(plugin_dir)
    recipe = root / "recipe.toml"
    recipe.write_text(recipe_text())

    out = root / "run"
    run = cli("run", str(recipe), "--out", str(out), env=env)

    pngs = root / "pngs"
    pngs.mkdir()
    images = load_digits().images  # 8×8, values 0..16
    for i in range(N_PNG):
        Image.fromarray(np.round(images[i] * 255 / 16).astype(np.uint8)).save(pngs / f"digit_{i}.png")
    preds = root / "preds.csv"
    predict = cli("predict", str(out), str(pngs), "--out", str(preds), env=env) if run.returncode == 0 else None
    return {"out": out, "run": run, "predict": predict, "preds": preds, "pngs": pngs}


def test_run_finishes(finished: dict[str, Any]) -> None:
    run = finished["run"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert (finished["out"] / "summary.json").exists()


def test_candidates_are_named_after_the_grouper(finished: dict[str, Any]) -> None:
    summary = json.loads((finished["out"] / "summary.json").read_text())
    names = set(summary["candidates"])
    # every clustering of a feature space went through [grouping] = spectral, none through k-means
    assert {"spectral:backbone", "spectral:instance", "spectral:cluster"} <= names, names
    assert not any(n.startswith("kmeans") for n in names), names
    # the recipe's own evaluation is the plugin's evaluator, and it was chosen (run.select = "recipe")
    assert summary["evaluation"] == "spectral_eval:backbone"
    assert summary["candidates"]["spectral_eval:backbone"].get("recipe") is True
    assert summary["assign"] == {"rule": "cosine_centroid", "space": "backbone", "momentum": False}
    assert summary["n_empty"] == 0 and 0.0 <= summary["acc"] <= 1.0
    assert "second_party" in summary["plugins"]


def test_epoch_end_value_is_under_values(finished: dict[str, Any]) -> None:
    lines = metrics(finished["out"])
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert 0.0 < line["values"]["balance_size_entropy"] <= 1.0
        assert "balance_size_entropy" not in line["losses"]  # recorded apart from the losses


def test_balance_term_is_logged_weighted(finished: dict[str, Any]) -> None:
    lines = metrics(finished["out"])
    for line in lines:
        losses, values = line["losses"], line["values"]
        assert set(losses) >= {"instance", "cluster", "balance"}
        # the engine multiplies what compute_loss returned by the recipe's weight before logging it
        assert values["balance_unweighted"] > 0
        assert losses["balance"] == pytest.approx(WEIGHT * values["balance_unweighted"], rel=1e-4)
        assert losses["loss"] == pytest.approx(losses["instance"] + losses["cluster"] + losses["balance"], rel=1e-5)


def test_predict_gives_each_png_a_cluster(finished: dict[str, Any]) -> None:
    predict = finished["predict"]
    assert predict is not None and predict.returncode == 0, (predict.stdout + predict.stderr) if predict else "no run"
    with finished["preds"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == [f"digit_{i}.png" for i in range(N_PNG)]
    assert all(int(r["cluster"]) in range(10) for r in rows)
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and float(r["distance"]) >= 0 for r in rows)
    # these PNGs are the dataset's first images: the nearest cluster mean mostly gives their own cluster
    with (finished["out"] / "assignments.csv").open() as fh:
        assigned = {int(r["index"]): int(r["cluster"]) for r in csv.DictReader(fh)}
    same = sum(int(r["cluster"]) == assigned[int(Path(r["path"]).stem.split("_")[1])] for r in rows)
    assert same >= N_PNG // 2, rows
