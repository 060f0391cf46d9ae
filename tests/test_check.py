"""`clustkit check` as a user calls it: malformed recipes exit 2 with the key named, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, TINY_CC, clustkit_exe


def check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([clustkit_exe(), "check", str(path), *extra], capture_output=True, text=True, timeout=120,
                          check=False)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def with_data(text: str, data: str) -> str:
    """The recipe with its [data] section (``name = "digits"``) replaced by ``data``."""
    return edit(text, '[data]\nname = "digits"\n', f"[data]\n{data}\n")


STL10_PASS = '[unlabeled]\nname = "stl10"\nroot = "data/stl10"\nsplit = "unlabeled"\n'

# (case id, recipe text transformation, extra CLI args, key that must be named, word of the allowed values)
CASES = [
    ("unknown-top-section", lambda t: t + "\n[trainer]\nx = 1\n", [], "trainer", "optimizer"),
    ("unknown-run-key", lambda t: edit(t, "epochs = 2", "epochs = 2\nepochz = 3"), [], "run.epochz", "epochs"),
    ("wrong-type", lambda t: edit(t, "epochs = 2", 'epochs = "two"'), [], "run.epochs", None),
    ("negative-epochs", lambda t: edit(t, "epochs = 2", "epochs = -1"), [], "run.epochs", None),
    ("tiny-batch", lambda t: edit(t, "batch_size = 64", "batch_size = 1"), [], "run.batch_size", None),
    ("unknown-dataset", lambda t: edit(t, 'name = "digits"', 'name = "digitz"'), [], "data.name", "mnist"),
    ("missing-data", lambda t: edit(t, '[data]\nname = "digits"\n', ""), [], "data", "digits"),
    ("unknown-backbone", lambda t: edit(t, 'name = "small_cnn"', 'name = "resnet99"'), [], "backbone.name", "timm"),
    ("unknown-backbone-key", lambda t: edit(t, "width = 8", "widht = 8"), [], "backbone.widht", "width"),
    ("bad-resnet-depth",
     lambda t: edit(t, 'name = "small_cnn"\nwidth = 8\nout_dim = 32', 'name = "resnet"\ndepth = 19'),
     [], "backbone.depth", None),
    ("unknown-loss", lambda t: edit(t, 'name = "instance_contrast"', 'name = "instance_contrastive"'), [],
     "losses.instance.name", "cluster_contrast"),
    ("bad-temperature", lambda t: edit(t, 'name = "instance_contrast"', 'name = "instance_contrast"\ntemperature = 0'),
     [], "losses.instance.temperature", None),
    ("loss-names-missing-head",
     lambda t: edit(t, 'name = "instance_contrast"', 'name = "instance_contrast"\nhead = "proj"'),
     [], "losses.instance.head", "cluster"),
    ("unknown-optimizer", lambda t: edit(t, 'name = "adam"', 'name = "lamb"'), [], "optimizer.name", "sgd"),
    ("unknown-evaluator", lambda t: edit(t, 'name = "head_argmax"', 'name = "argmax"'), [], "evaluation.name",
     "kmeans"),
    ("bad-device", lambda t: edit(t, "seed = 0", 'seed = 0\ndevice = "tpu"'), [], "run.device", None),
    ("heads-not-tables",
     lambda t: t.replace('[heads.cluster]\nname = "cc_cluster"\nhidden = 32\n', "") + "\n[heads]\nfoo = 3\n",
     [], "heads", None),
    ("invalid-toml", lambda t: t + "\n[run\n", [], None, None),
    ("bad-set-key", lambda t: t, ["--set", "optimizer.lrr=0.1"], "optimizer.lrr", "lr"),
    ("bad-set-syntax", lambda t: t, ["--set", "optimizer.lr"], "optimizer.lr", None),
    ("set-into-value", lambda t: t, ["--set", "run.seed.x=1"], "run.seed", None),
    ("required-plugin-missing", lambda t: edit(t, "seed = 0", 'seed = 0\nplugins = ["scan"]'), [], "run.plugins[0]",
     "cc"),
    # each dataset takes its own options: another dataset's option is an unknown key, naming the ones it takes
    ("option-of-another-dataset", lambda t: with_data(t, 'name = "mnist"\nroot = "d"\nsuperclasses = true'), [],
     "data.superclasses", "root"),
    ("split-of-another-dataset", lambda t: with_data(t, 'name = "mnist"\nroot = "d"\nsplit = "unlabeled"'), [],
     "data.split", "test"),
    ("no-split-in-digits", lambda t: edit(t, 'name = "digits"', 'name = "digits"\nsplit = "test"'), [], "data.split",
     "all"),
    ("no-root-in-digits", lambda t: edit(t, 'name = "digits"', 'name = "digits"\nroot = "data"'), [], "data.root",
     "image_size"),
    ("in-memory-on-array-data", lambda t: with_data(t, 'name = "cifar10"\nroot = "d"\nin_memory = false'), [],
     "data.in_memory", "cache_dir"),
    ("set-option-of-another-dataset", lambda t: t, ["--set", "data.unlabeled=true"], "data.unlabeled", "channels"),
    ("unlabeled-option-of-another-dataset",
     lambda t: edit(t, "[backbone]", STL10_PASS + 'classes = ["a"]\n\n[backbone]'), [], "unlabeled.classes",
     "unlabeled"),
]


@pytest.mark.parametrize("case,transform,extra,key,allowed", CASES, ids=[c[0] for c in CASES])
def test_check_rejects_malformed_recipe(tmp_path: Path, case: str, transform, extra: list[str], key: str | None,
                                        allowed: str | None) -> None:
    path = tmp_path / f"{case}.toml"
    path.write_text(transform(TINY_CC))
    result = check(path, *extra)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert str(path.name) in message
    if key is not None:
        assert f"'{key}'" in message, message
    if allowed is not None:
        assert "Allowed values" in message and allowed in message, message


def test_an_option_the_dataset_does_not_take_is_one_paragraph_naming_the_file_and_key(tmp_path: Path) -> None:
    """[data] is validated by the chosen dataset's own options: superclasses is cifar100's, so on mnist
    `clustkit check` refuses it, listing the keys mnist takes, instead of the build failing later."""
    path = tmp_path / "mnist_superclasses.toml"
    path.write_text(with_data(TINY_CC, 'name = "mnist"\nroot = "data/mnist"\nsuperclasses = true'))
    result = check(path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "\n\n" not in result.stderr.strip()
    message = " ".join(result.stderr.split())
    assert str(path) in message and "'data.superclasses'" in message and "unknown key" in message, message
    allowed = message.split("Allowed values:")[1]
    assert {k.strip(" .") for k in allowed.split(",")} == {"channels", "image_size", "imbalance", "name", "root",
                                                                  "split"}, message

    path.write_text(with_data(TINY_CC, 'name = "cifar100"\nroot = "data/cifar100"\nsuperclasses = true'))
    assert check(path).returncode == 0


def test_each_dataset_allows_its_own_splits(tmp_path: Path) -> None:
    """'unlabeled' is stl10's alone; digits and COIL-20 have no train/test split."""
    for dataset, split, ok in [("mnist", "unlabeled", False), ("coil20", "train", False), ("stl10", "unlabeled", True),
                               ("mnist", "train", True)]:
        path = tmp_path / f"{dataset}_{split}.toml"
        path.write_text(with_data(TINY_CC, f'name = "{dataset}"\nroot = "data"\nsplit = "{split}"'))
        result = check(path)
        assert result.returncode == (0 if ok else 2), (dataset, split, result.stderr)
        if not ok:
            assert "'data.split'" in result.stderr and f"'{split}' is not a valid choice" in result.stderr


def test_plugins_show_lists_only_the_options_each_dataset_takes() -> None:
    def keys(name: str) -> dict[str, dict]:
        result = subprocess.run([clustkit_exe(), "plugins", "--show", name, "--json"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "COLUMNS": "250"}, check=False)
        assert result.returncode == 0, result.stderr
        (component,) = json.loads(result.stdout)["components"]
        return {f["key"]: f for f in component["fields"]}

    mnist = keys("mnist")
    assert set(mnist) == {"root", "split", "image_size", "channels", "imbalance"}
    assert "unlabeled" not in mnist["split"]["type"] and mnist["channels"]["default"] is None
    assert keys("cifar100")["superclasses"]["default"] is True
    stl10 = keys("stl10")
    assert "'unlabeled'" in stl10["split"]["type"] and stl10["unlabeled"]["default"] is False
    assert set(keys("image_folder")) == {"root", "split", "image_size", "channels", "in_memory", "classes",
                                         "imbalance"}
    assert set(keys("digits")) == {"split", "image_size", "channels", "imbalance"}


def test_check_accepts_valid_recipe_and_set(tiny_recipe: Path) -> None:
    result = check(tiny_recipe, "--set", "optimizer.lr=0.01", "--show")
    assert result.returncode == 0, result.stderr
    assert "lr = 0.01" in result.stdout
    assert "ok" in result.stdout


def test_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.toml")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.toml")))
def test_every_shipped_recipe_validates(recipe: str, plugin_set) -> None:
    from clustkit.recipe import load

    ps = plugin_set()
    loaded = load(REPO / recipe, ps.registry, installed_plugins=list(ps.info))
    assert loaded.components


def test_an_unknown_key_in_an_optional_table_is_named_in_full() -> None:
    """`X | None` holding a model is that model, not a union whose member tags pydantic puts in the
    location: the error names `bench.slurm.partitio`, not `bench.slurm`."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from clustkit.recipe.errors import validation_error

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        partition: str | None = None

    class Outer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        slurm: Inner | None = None

    try:
        Outer.model_validate({"slurm": {"partitio": "gpu"}})
    except ValidationError as exc:
        err = validation_error("bench.toml", exc, Outer, "bench")
    assert "'bench.slurm.partitio'" in str(err) and "partition" in str(err)
