"""Runs on cached features of a frozen backbone ([features]): the cache (reuse, resume after a
kill, damaged and stale folders), the views drawn from it, the trunk, and the recipe's errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.test_cli import cli

from clustkit.engine import feature_cache
from clustkit.engine.build import build_run
from clustkit.engine.cached import FeatureViews, nearest, prepare
from clustkit.recipe import load
from conftest import run_recipe

RECIPE = """
[run]
name = "cached"
epochs = 2
batch_size = 128
plugins = ["cc"]
report = false
[data]
name = "digits"
[backbone]
name = "small_cnn"
[features]
trunk_dim = 64
batch_size = 256
[heads.instance]
name = "cc_instance"
[heads.cluster]
name = "cc_cluster"
[views]
name = "tensor_affine"
[losses.instance]
name = "instance_contrast"
[losses.cluster]
name = "cluster_contrast"
[evaluation]
name = "head_argmax"
head = "cluster"
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "cached.toml"
    path.write_text(RECIPE.replace("[features]", f'[features]\ncache_dir = "{tmp_path / "cache"}"'))
    return path


def built(path: Path, plugin_set: Any, *overrides: str) -> Any:
    plugins = plugin_set()
    return build_run(load(path, plugins.registry, list(overrides)), plugins, None)


def cache_files(tmp_path: Path) -> dict[str, np.ndarray]:
    folder = next((tmp_path / "cache" / "features").iterdir())
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def test_a_cached_run_extracts_once_and_a_second_run_reuses_the_cache(recipe: Path, tmp_path: Path) -> None:
    first = cli("run", str(recipe), "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    assert "extracting features: 8 chunk(s)" in first.stderr + first.stdout
    second = cli("run", str(recipe), "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr
    assert "extracting features" not in second.stderr + second.stdout
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("a", "b"))
    assert a["acc"] == b["acc"] and a["nmi"] == b["nmi"]  # the same rows, the same run


def test_cached_rows_are_the_frozen_backbones_features_and_the_trunk_reads_both(recipe: Path,
                                                                                plugin_set: Any) -> None:
    run = built(recipe, plugin_set)
    prepare(run)
    trunk = run.ctx.model.backbone.eval()
    images = torch.as_tensor(run.ctx.dataset.images[:16]).float() / 255
    with torch.no_grad():
        direct = trunk.frozen(images)
        cached = torch.as_tensor(np.array(run.feature_cache.eval[:16])).float()
        assert torch.allclose(cached, direct, rtol=2e-3, atol=2e-3)  # float16 on disk
        assert torch.allclose(trunk(images), trunk(direct), atol=1e-6)  # images go through the frozen model
    assert not any(p.requires_grad for p in trunk.frozen.parameters())


def test_an_extraction_killed_midway_resumes_to_what_an_uninterrupted_one_writes(
        recipe: Path, tmp_path: Path, plugin_set: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ("features.augmentations=2", 'features.positives="augment"')
    prepare(built(recipe, plugin_set, *overrides))
    whole = cache_files(tmp_path)
    assert set(whole) == {"eval.npy", next(n for n in whole if n.startswith("aug-"))}
    assert whole[next(n for n in whole if n.startswith("aug-"))].shape == (2, 2, 1797, 256)
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file():
            p.unlink()

    finished = feature_cache.CachePart.finish
    calls = {"n": 0}

    def killed(self: Any, array: Any, c: int, unreadable: Any) -> None:
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the process dies after 5 chunks were written
        calls["n"] += 1
        finished(self, array, c, unreadable)

    monkeypatch.setattr(feature_cache.CachePart, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(built(recipe, plugin_set, *overrides))
    monkeypatch.setattr(feature_cache.CachePart, "finish", finished)
    run = built(recipe, plugin_set, *overrides)
    prepare(run)
    assert run.feature_cache.extracted == 8 - 2  # chunks 0-1 had both parts; 2 had eval only, then 3-7
    resumed = cache_files(tmp_path)
    assert all(np.array_equal(resumed[k], whole[k]) for k in whole)


def test_a_damaged_chunk_is_extracted_again_never_used(recipe: Path, tmp_path: Path, plugin_set: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    prepare(built(recipe, plugin_set))
    good = cache_files(tmp_path)["eval.npy"]
    path = next((tmp_path / "cache" / "features").iterdir()) / "eval.npy"
    damaged = np.load(path, mmap_mode="r+")
    damaged[300, :8] = 7.0  # chunk 1 (rows 256-511)
    damaged.flush()
    del damaged
    run = built(recipe, plugin_set)
    prepare(run)
    assert "rows 256-511 do not match their checksum" in capsys.readouterr().err
    assert run.feature_cache.extracted == 1
    assert np.array_equal(cache_files(tmp_path)["eval.npy"], good)


def test_a_stale_folder_is_rebuilt(recipe: Path, tmp_path: Path, plugin_set: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    prepare(built(recipe, plugin_set))
    meta = next((tmp_path / "cache" / "features").iterdir()) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 0}))
    run = built(recipe, plugin_set)
    prepare(run)
    assert "is stale" in capsys.readouterr().err and run.feature_cache.extracted == 8


def test_another_weight_gets_another_folder(recipe: Path, tmp_path: Path, plugin_set: Any) -> None:
    prepare(built(recipe, plugin_set))
    prepare(built(recipe, plugin_set, "run.seed=1"))  # a random backbone: the seed changes its weights
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2


def test_neighbour_views_pair_each_item_with_one_of_its_nearest(recipe: Path, plugin_set: Any) -> None:
    run = built(recipe, plugin_set, "features.neighbours=5")
    prepare(run)
    views = run.features
    assert isinstance(views, FeatureViews) and views.neighbours is not None
    index = torch.arange(40)
    made = views(index)
    assert list(made) == ["weak1", "weak2"]
    rows = torch.as_tensor(np.array(run.feature_cache.eval)).float()
    assert torch.equal(made["weak1"], rows[:40])
    x = F.normalize(rows, dim=1)
    for i in range(40):
        sims = x @ x[i]
        sims[i] = -2
        fifth = float(sims.topk(5).values[-1])
        same = [j for j in range(len(rows)) if j != i and torch.equal(rows[j], made["weak2"][i])]
        assert same and max(float(sims[j]) for j in same) >= fifth - 1e-4, i  # up to float ties
    assert nearest(rows[:10], 3).shape == (10, 3)


def test_the_k_means_baseline_trains_nothing(recipe: Path, tmp_path: Path, plugin_set: Any) -> None:
    summary = run_recipe(recipe, plugin_set(), tmp_path / "km", [
        "run.epochs=0", "features.trunk_dim=0", "heads={}", "losses={}",
        'evaluation={name="kmeans", features="backbone"}'])
    assert summary["epochs"] == 0 and summary["acc"] > 0.2
    bad = cli("run", str(recipe), "--set", "features.trunk_dim=0", "--set", "heads={}", "--set", "losses={}",
              "--set", 'evaluation={name="kmeans", features="backbone"}')
    assert bad.returncode == 2 and "nothing in the network trains" in bad.stderr


@pytest.mark.parametrize(("overrides", "key", "words"), [
    (['backbone={name="timm", model="resnet18", train="all"}'], "backbone.train", "frozen backbone"),
    (['features.positives="augment"'], "features.augmentations", "cache at least one round"),
    (["features.trunk=[128]", "features.trunk_dim=0"], "features.trunk_dim", "needs an output size"),
])
def test_recipe_errors_name_the_key(recipe: Path, overrides: list[str], key: str, words: str) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    result = cli("check", str(recipe), *args)
    assert result.returncode == 2 and key in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr


def test_two_torchrun_ranks_share_the_extraction_and_fill_the_same_cache(recipe: Path, tmp_path: Path,
                                                                        plugin_set: Any) -> None:
    """Each rank extracts every other chunk into the shared folder; the cache they leave equals the
    one a single process writes, and the two-process run trains on it."""
    import os
    import subprocess

    from conftest import clustkit_exe, torchrun_exe

    out = tmp_path / "ddp"
    result = subprocess.run([torchrun_exe(), "--standalone", "--nproc-per-node", "2", clustkit_exe(), "run",
                             str(recipe), "--out", str(out), "--set", "run.epochs=1"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert "(shared over the ranks)" in " ".join((result.stderr + result.stdout).split())
    shared = cache_files(tmp_path)["eval.npy"]
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file():
            p.unlink()
    prepare(built(recipe, plugin_set))
    assert np.array_equal(cache_files(tmp_path)["eval.npy"], shared)
