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


def test_predict_gives_an_unreadable_file_no_confidence_and_leaves_it_out_of_the_count(
        trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes((trained["images"] / name).read_bytes())
    (folder / "002.png").write_bytes(b"not an image")
    out = tmp_path / "pred.csv"
    result = cli("predict", str(trained["kmeans"]), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows["002.png"]["cluster"] == "-1"
    assert rows["002.png"]["confidence"] == "" and rows["002.png"]["distance"] == ""  # no value, not a made-up one
    assert float(rows["000.png"]["confidence"]) > 0 and float(rows["000.png"]["distance"]) >= 0
    assert "wrote" in result.stdout and ": 2 images in" in result.stdout and "1 unreadable" in result.stdout


@pytest.fixture
def damaged(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of a finished run whose checkpoint was cut short (a full disk, a copy interrupted)."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(trained["argmax"], folder)
    ckpt = folder / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    return folder


@pytest.mark.parametrize("command", [["predict", "{run}", "{images}", "--out", "{tmp}/p.csv"], ["evaluate", "{run}"],
                                     ["export", "{run}", "--out", "{tmp}/e"]], ids=["predict", "evaluate", "export"])
def test_a_damaged_checkpoint_is_an_input_error_naming_the_file(command: list[str], damaged: Path,
                                                                trained: dict[str, Path], tmp_path: Path) -> None:
    args = [a.format(run=damaged, images=trained["images"], tmp=tmp_path) for a in command]
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert f"{damaged / 'checkpoints' / 'last.pt'} is damaged" in text and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4  # one paragraph (wrapped by the console)


def test_load_run_of_a_damaged_checkpoint_raises_a_user_error(damaged: Path) -> None:
    import clustkit

    with pytest.raises(clustkit.UserError, match="is damaged and cannot be read as a checkpoint"):
        clustkit.load_run(damaged)


def test_a_run_folder_written_by_clustkit_0_1_still_loads(trained: dict[str, Path], tmp_path: Path) -> None:
    """0.1 wrote every dataset option into recipe.toml, also those digits does not take; its
    checkpoints carry no version."""
    import shutil

    import torch

    import clustkit

    folder = tmp_path / "v01"
    shutil.copytree(trained["argmax"], folder)
    recipe = folder / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('[data]\nname = "digits"\n', '[data]\nname = "digits"\n'
                                                 'superclasses = true\nunlabeled = false\nchannels = 3\n'
                                                 'in_memory = "auto"\n'))
    assert "superclasses = true" in recipe.read_text()
    ckpt = folder / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["clustkit"]
    torch.save(state, ckpt)
    run = clustkit.load_run(folder)
    assert run.ctx.in_channels == 1  # channels = 3 was 0.1's default, never applied to digits
    assert run.run_clusters().tolist() == _assignments(trained["argmax"])
