"""Long-tailed subsamples of labelled datasets (data.imbalance): the profile, determinism, both kinds
of dataset, and the recipe key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.test_cli import cli

from clustkit.data import DatasetError, InMemoryDataset, load_dataset
from clustkit.data.imbalance import long_tail_counts, long_tail_indices


def test_the_exponential_profile_keeps_the_largest_class_and_a_ratio_th_of_the_smallest() -> None:
    counts = long_tail_counts(np.full(10, 5000), 10.0, "exponential")
    assert counts[0] == 5000 and counts[-1] == 500
    expected = [int(5000 * 10 ** (-c / 9) + 1e-9) for c in range(10)]  # n_max · ratio^(-c/(C-1)), floored
    assert counts.tolist() == expected and all(np.diff(counts) < 0)
    step = long_tail_counts(np.full(4, 100), 4.0, "step")
    assert step.tolist() == [100, 100, 25, 25]
    assert long_tail_counts(np.array([10, 3, 10]), 2.0, "exponential").tolist() == [10, 3, 5]  # capped


def test_the_subsample_is_deterministic_from_its_seed() -> None:
    labels = np.repeat(np.arange(5), 200)
    a, b = long_tail_indices(labels, 5.0, seed=3), long_tail_indices(labels, 5.0, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, long_tail_indices(labels, 5.0, seed=4))
    assert np.bincount(labels[a]).tolist() == long_tail_counts(np.full(5, 200), 5.0, "exponential").tolist()


def test_an_in_memory_dataset_and_a_folder_are_subsampled_alike(tmp_path: Path) -> None:
    digits = load_dataset("digits", imbalance={"ratio": 10})
    assert isinstance(digits, InMemoryDataset) and digits.name == "digits-lt10"
    sizes, full = np.bincount(digits.labels), np.bincount(load_dataset("digits").labels)
    assert sizes.tolist() == long_tail_counts(full, 10.0, "exponential").tolist()
    assert sizes[0] == full[0] and sizes[-1] == full.max() // 10  # class 0 keeps all it has (178 of n_max 183)
    for k in range(3):
        (tmp_path / f"c{k}").mkdir()
        for i in range(8):
            Image.new("RGB", (8, 8), (30 * k, i, 0)).save(tmp_path / f"c{k}" / f"{i}.png")
    folder = load_dataset("image_folder", root=tmp_path, image_size=8, in_memory=False,
                          imbalance={"ratio": 4, "profile": "step"})
    assert np.bincount(folder.labels).tolist() == [8, 8, 2] and len(folder.paths) == 18
    image, label, index = folder[17]
    assert image.shape == (3, 8, 8) and label == 2 and index == 17


def test_an_unlabelled_dataset_cannot_be_made_long_tailed(tmp_path: Path) -> None:
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DatasetError, match="needs every item's label"):
        load_dataset("image_folder", root=tmp_path, image_size=8, imbalance={"ratio": 2})


def test_a_recipe_runs_on_a_long_tailed_dataset_and_refuses_a_bad_ratio(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "lt"
    result = cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.epochs=1",
                 "--set", 'data.imbalance={ratio=5, profile="step", seed=1}')
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits-lt5" and summary["n_samples"] < 1797
    lt = load_dataset("digits", imbalance={"ratio": 5, "profile": "step", "seed": 1})
    sizes = summary["sizes"]
    assert sizes["classes"] == sorted(np.bincount(lt.labels).tolist(), reverse=True)
    assert len(sizes["clusters"]) == 10 and sum(sizes["clusters"]) == len(lt)
    bad = cli("check", str(tiny_recipe), "--set", "data.imbalance={ratio=0.5}")
    assert bad.returncode == 2 and "data.imbalance.ratio" in bad.stderr and "Traceback" not in bad.stderr


def test_the_size_profile_flags_empty_tiny_and_giant_clusters_without_labels() -> None:
    from clustkit.cluster.diagnostics import size_profile

    clusters = np.array([0] * 70 + [1] * 25 + [2] * 3 + [3] * 2)  # 5 ids, 100 items: a balanced cluster is 20
    profile = size_profile(clusters, 5)
    assert profile == {"clusters": [70, 25, 3, 2, 0], "empty": [4], "tiny": [], "giant": [0]}
    assert size_profile(np.array([0] * 97 + [1] * 1 + [2] * 2), 3)["tiny"] == [1, 2]
    labels = np.array([0] * 50 + [1] * 50)
    assert size_profile(clusters, 5, labels)["classes"] == [50, 50]
