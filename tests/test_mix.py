"""Recipes that mix papers (SACC views + DCHL losses + timm + FAISS k-means), the paper recipes,
and plugin isolation: disabling one plugin leaves the others working."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, clustkit_exe, run_recipe

MIX = REPO / "recipes" / "mix" / "sacc_views_dchl_losses.toml"


def cli(*args: str, disable: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if disable is not None:
        env["CLUSTKIT_DISABLE_PLUGINS"] = disable
    return subprocess.run([clustkit_exe(), *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_mix_recipe_validates_with_clustkit_check():
    res = cli("check", str(MIX))
    assert res.returncode == 0, res.stderr
    for part in ("views=sacc", "backbone=timm", "losses.group=dchl_group", "grouping=kmeans", "evaluation=head_argmax"):
        assert part in res.stdout.replace("\n", "")


def test_plugins_list_sacc_and_dchl_components():
    data = json.loads(cli("plugins", "--json").stdout)
    comps = {p["name"]: {(c["kind"], c["name"]) for c in p["components"]} for p in data["plugins"]}
    assert {("views", "sacc"), ("loss", "sacc_instance"), ("loss", "sacc_cluster")} <= comps["sacc"]
    assert {("head", "dchl_coarse"), ("head", "dchl_fine"), ("loss", "dchl_instance"), ("loss", "dchl_cluster"),
            ("loss", "dchl_group")} <= comps["dchl"]


def test_disabling_sacc_leaves_dchl_and_cc_working():
    res = cli("plugins", "--json", disable="sacc")
    names = {p["name"] for p in json.loads(res.stdout)["plugins"]}
    assert {"dchl", "cc", "builtin"} <= names and "sacc" not in names
    ok = cli("check", "recipes/dchl.toml", disable="sacc")
    assert ok.returncode == 0, ok.stderr
    assert cli("check", "recipes/cc.toml", disable="sacc").returncode == 0
    gone = cli("check", str(MIX), disable="sacc")
    assert gone.returncode == 2 and "sacc" in gone.stderr and "Traceback" not in gone.stderr


def test_disabling_dchl_leaves_sacc_working():
    assert cli("check", "recipes/sacc.toml", disable="dchl").returncode == 0
    assert cli("check", str(MIX), disable="dchl").returncode == 2


# small-CNN recipes and the pretrained track's: not the papers' settings
CPU_BUDGET = ("usps", "mnist", "coil20", "fashion_mnist", "kmnist", "pretrained")


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("recipes/*/*.toml")
                                        if p.stem in ("sacc", "dchl") and p.parent.name not in CPU_BUDGET))
def test_paper_recipes_validate(path, plugin_set):
    from clustkit.recipe import load

    ps = plugin_set()
    recipe = load(REPO / path, ps.registry)
    assert recipe.run.epochs == 1000 and recipe.optimizer.lr == 3e-4
    assert recipe.backbone.name == "resnet" and recipe.backbone.depth == 34 and recipe.backbone.stem == "imagenet"
    assert recipe.views.size == 224
    assert recipe.run.batch_size == (200 if Path(path).stem == "sacc" else 256)
    assert "$" not in recipe.data.root
    if Path(path).stem == "dchl":
        assert recipe.losses["group"].groups < recipe.run.batch_size


def test_data_roots_default_when_the_variable_is_unset(monkeypatch, plugin_set):
    from clustkit.recipe import load

    monkeypatch.delenv("CLUSTKIT_DATA", raising=False)
    assert load(REPO / "recipes/cifar10/sacc.toml", plugin_set().registry).data.root == "data/cifar10"
    monkeypatch.setenv("CLUSTKIT_DATA", "/srv/d")
    assert load(REPO / "recipes/cifar10/sacc.toml", plugin_set().registry).data.root == "/srv/d/cifar10"


def test_tiny_mix_run_end_to_end(plugin_set, tmp_path: Path):
    """SACC's views feed DCHL's losses through a timm backbone; FAISS k-means groups; the coarse
    head's argmax, voted in backbone space, is the evaluation, and every candidate is voted alike."""
    summary = run_recipe(MIX, plugin_set(), tmp_path / "run", [
        "run.epochs=1", "run.batch_size=128", "run.eval_every=0", "heads.instance.hidden=[32]",
        "heads.cluster.hidden=32", "heads.fine.hidden=32", "losses.group.groups=8"])
    assert summary["selection"]["recipe"] == "argmax:cluster+vote" and 0 <= summary["acc"] <= 1
    assert all(name.endswith("+vote") for name in summary["candidates"])
    losses = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert {"instance", "cluster", "group_self", "group_cross"} <= set(losses)
