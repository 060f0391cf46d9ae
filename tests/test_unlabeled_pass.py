"""CC's STL-10 protocol: each epoch a pass over the unlabelled images with only the listed loss
terms, then a pass over train + test with every term ([unlabeled] + run.unlabeled_losses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clustkit.errors import RecipeError
from conftest import run_recipe

RECIPE = """
[run]
seed = 0
epochs = 2
batch_size = 8
unlabeled_losses = ["instance"]

[data]
name = "stl10"
root = "{root}"

[unlabeled]
name = "stl10"
root = "{root}"
split = "unlabeled"

[backbone]
name = "small_cnn"
width = 4
out_dim = 16

[heads.instance]
name = "cc_instance"
hidden = 16
out_dim = 8

[heads.cluster]
name = "cc_cluster"
hidden = 16

[views]
name = "tensor_affine"

[losses.instance]
name = "instance_contrast"

[losses.cluster]
name = "cluster_contrast"

[evaluation]
name = "head_argmax"
"""


def fake_stl10(root: Path, n_train: int = 10, n_test: int = 6, n_unlabeled: int = 24) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        (folder / f"{split}_X.bin").write_bytes(rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(bytes(rng.integers(1, 11, n, dtype=np.uint8).tolist()))


@pytest.fixture
def stl_recipe(tmp_path: Path) -> Path:
    fake_stl10(tmp_path / "stl")
    path = tmp_path / "stl.toml"
    path.write_text(RECIPE.format(root=tmp_path / "stl"))
    return path


def test_unlabeled_split_loads_only_the_unlabelled_images(tmp_path: Path) -> None:
    from clustkit.data import load_dataset

    fake_stl10(tmp_path)
    ds = load_dataset("stl10", root=tmp_path, split="unlabeled")
    assert len(ds) == 24 and (np.asarray(ds.labels) == -1).all()
    assert len(load_dataset("stl10", root=tmp_path)) == 16


def test_each_epoch_trains_unlabelled_items_on_the_listed_losses_only(stl_recipe: Path, tmp_path: Path,
                                                                     plugin_set, monkeypatch) -> None:
    from clustkit.engine import run

    seen: list[tuple[str, int, tuple[str, ...]]] = []
    step = run.train_step

    def spy(state, batch, losses):
        terms = step(state, batch, losses)
        seen.append((state.current_pass, int((batch[1] >= 0).sum()), tuple(sorted(k for k in terms if k != "loss"))))
        return terms

    monkeypatch.setattr(run, "train_step", spy)
    summary = run_recipe(stl_recipe, plugin_set(), tmp_path / "out")
    # per epoch: 24 unlabelled images -> 3 steps on "instance" only, then 16 labelled -> 2 steps on both terms
    epoch = [("unlabeled", 0, ("instance",))] * 3 + [("data", 8, ("cluster", "instance"))] * 2
    assert seen == epoch * 2
    assert summary["n_samples"] == 16 and summary["acc"] is not None
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[-1]["losses"]) == {"unlabeled_instance", "unlabeled_loss", "instance", "cluster", "loss"}


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace('unlabeled_losses = ["instance"]\n', ""), "run.unlabeled_losses"),
    (lambda s: s.replace('unlabeled_losses = ["instance"]', 'unlabeled_losses = ["instanse"]'),
     "run.unlabeled_losses[0]"),
    (lambda s: s[: s.index("[unlabeled]")] + s[s.index("[backbone]"):], "run.unlabeled_losses"),
])
def test_recipe_errors_name_the_key(stl_recipe: Path, plugin_set, edit, key) -> None:
    from clustkit.recipe import load

    stl_recipe.write_text(edit(stl_recipe.read_text()))
    with pytest.raises(RecipeError) as exc:
        load(stl_recipe, plugin_set().registry)
    assert exc.value.key == key
