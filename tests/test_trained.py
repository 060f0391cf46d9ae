"""Using a trained run as a user does: ``clustkit predict``, ``evaluate``, ``export`` and
``clustkit.load_run``; none of them changes the run folder."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CC
from test_cli import cli

pytestmark = pytest.mark.slow


def _folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished tiny digits runs: one assigns by the cluster head's argmax, one by k-means
    on the backbone (so new images go to the nearest cluster mean), both the recipe's evaluation
    (``run.select = "recipe"``); PNGs of 40 of its images."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_CC)
    runs = {}
    for name, extra in (("argmax", []), ("kmeans", ["--set", 'evaluation={name="kmeans", features="backbone"}'])):
        out = root / name
        result = cli("run", str(recipe), "--out", str(out), "--set", "run.report=false", "--set", 'run.select="recipe"',
                     *extra)
        assert result.returncode == 0, result.stderr
        runs[name] = out
    from PIL import Image

    from clustkit.data import load_dataset

    images = root / "pngs"
    images.mkdir()
    ds = load_dataset("digits")  # PNGs of the dataset's first 40 images, pixel for pixel
    for i in range(40):
        Image.fromarray(ds[i][0].numpy()[0]).save(images / f"{i:03d}.png")
    runs["images"] = images
    return runs


def _assignments(run: Path) -> list[int]:
    with (run / "assignments.csv").open() as fh:
        return [int(r["cluster"]) for r in csv.DictReader(fh)]


def test_predict_a_folder_agrees_with_the_runs_own_assignments(trained: dict[str, Path], tmp_path: Path) -> None:
    before = _folder_digest(trained["argmax"])
    out = tmp_path / "pred.csv"
    result = cli("predict", str(trained["argmax"]), str(trained["images"]), "--out", str(out),
                 "--copy-to", str(tmp_path / "by_cluster"))
    assert result.returncode == 0, result.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "cluster", "confidence"]
    assert [Path(r["path"]).name for r in rows] == [f"{i:03d}.png" for i in range(40)]
    assert [int(r["cluster"]) for r in rows] == _assignments(trained["argmax"])[:40]
    assert all(0.0 < float(r["confidence"]) <= 1.0 for r in rows)
    copied = sorted(p.parent.name for p in (tmp_path / "by_cluster").rglob("*.png"))
    assert copied == sorted(f"cluster_{r['cluster']}" for r in rows)
    assert _folder_digest(trained["argmax"]) == before


def test_predict_by_nearest_cluster_mean_for_a_kmeans_run(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    result = cli("predict", str(trained["kmeans"]), str(trained["images"]), "--out", str(out), "--embedding")
    assert result.returncode == 0, result.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"path", "cluster", "confidence", "distance", "embedding_0", "embedding_31"} <= set(rows[0])
    agree = np.mean([int(r["cluster"]) == a for r, a in zip(rows, _assignments(trained["kmeans"]))])
    assert agree >= 0.95  # k-means labels are (nearly) the nearest-centroid labels of their own centroids
    assert all(float(r["distance"]) >= 0 for r in rows)


def test_python_api_predicts_files_and_reports_unreadable_ones(trained: dict[str, Path], tmp_path: Path) -> None:
    import clustkit

    run = clustkit.load_run(trained["argmax"])
    files = [trained["images"] / "000.png", trained["images"] / "001.png"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    result = run.predict([*files, bad])
    assert result.clusters[:2].tolist() == _assignments(trained["argmax"])[:2]
    assert result.clusters[2] == -1


def test_evaluate_prints_the_summarys_acc_and_every_candidate(trained: dict[str, Path], tmp_path: Path) -> None:
    summary = json.loads((trained["argmax"] / "summary.json").read_text())
    result = cli("evaluate", str(trained["argmax"]), "--json", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    recipe_row = next(v for v in report["candidates"].values() if v.get("recipe"))
    assert recipe_row["acc"] == pytest.approx(summary["acc"], abs=1e-12)
    assert report["selection"]["criterion"] == "recipe" and report["selection"]["chosen"] == "argmax:cluster"
    assert {"argmax:cluster", "kmeans:backbone", "kmeans:instance", "kmeans:cluster"} <= set(report["candidates"])
    assert all({"acc", "nmi", "ari", "ami", "size_entropy", "n_empty"} <= set(r) for r in report["candidates"].values())
    assert 0.1 < report["knn_acc"] <= 1 and 0.1 < report["linear_probe_acc"] <= 1
    assert json.loads((tmp_path / "eval.json").read_text()) == report
    table = cli("evaluate", str(trained["argmax"]), "--no-probes")
    assert table.returncode == 0 and f"{summary['acc']:.4f}" in table.stdout


def test_export_writes_arrays_of_the_right_shape(trained: dict[str, Path], tmp_path: Path) -> None:
    before = _folder_digest(trained["argmax"])
    out = tmp_path / "export"
    result = cli("export", str(trained["argmax"]), "--features", "backbone", "--features", "cluster", "--out", str(out))
    assert result.returncode == 0, result.stderr
    backbone, soft, labels = (np.load(out / f"{n}.npy") for n in ("backbone", "cluster", "labels"))
    assert backbone.shape == (1797, 32) and soft.shape == (1797, 10) and labels.shape == (1797,)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-4)
    assert soft.argmax(1).tolist() == _assignments(trained["argmax"])
    import pyarrow.parquet as pq  # the test extra installs pyarrow

    result = cli("export", str(trained["argmax"]), "--features", "instance", "--format", "parquet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out / "features.parquet")
    assert table.num_rows == 1797 and table.column_names == ["index", "label", "instance"]
    assert _folder_digest(trained["argmax"]) == before


def test_bad_inputs_exit_2_without_a_traceback(trained: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        ("predict", str(tmp_path), str(trained["images"])),                                    # not a run folder
        ("predict", str(trained["argmax"]), str(tmp_path / "missing")),                        # no such images
        ("predict", str(trained["argmax"]), str(trained["images"]), "--out", str(trained["argmax"] / "p.csv")),
        ("export", str(trained["argmax"]), "--features", "nohead", "--out", str(tmp_path / "e")),
        ("export", str(trained["argmax"]), "--format", "xls", "--out", str(tmp_path / "e")),
        ("evaluate", str(trained["argmax"]), "--set", "heads.cluster.hidden=[7]", "--no-probes"),  # another network
    ]
    for args in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and "error" in result.stderr


def test_predict_the_runs_own_dataset_reproduces_its_assignments(trained: dict[str, Path], tmp_path: Path) -> None:
    """Without IMAGES the run's dataset is predicted: the argmax run gives assignments.csv exactly,
    the k-means run (its centroids kept in the checkpoint) nearly exactly."""
    for name, least in (("argmax", 1.0), ("kmeans", 0.99)):
        out = tmp_path / f"{name}.csv"
        result = cli("predict", str(trained[name]), "--out", str(out))
        assert result.returncode == 0, result.stderr
        with out.open() as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0])[:3] == ["index", "label", "cluster"] and len(rows) == 1797
        agree = np.mean([int(r["cluster"]) == a for r, a in zip(rows, _assignments(trained[name]))])
        assert agree >= least, (name, agree)
