"""A plugin written against clustkit 0.1's documented API: what keeps working in 0.2, and what fails
with a message that says what to change (docs/api.md, "From clustkit 0.1")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clustkit import ComponentConfig, LossConfig, PluginError, Prediction, hookimpl
from conftest import TINY_CC, run_recipe


class OldLoss:
    """0.1 style: the role method marked as a hook implementation."""

    def __init__(self, cfg: Any, ctx: Any):
        self.calls = 0

    @hookimpl
    def compute_loss(self, out: Any, ctx: Any) -> Any:
        self.calls += 1
        return out.head("weak2", "instance").pow(2).mean()


class OldGrouper:
    """0.1 style: ``trylast`` and no ``rows`` (it takes whole matrices only)."""

    def __init__(self, cfg: Any, ctx: Any):
        pass

    @hookimpl(trylast=True)
    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, n_init: Any, ctx: Any) -> Any:
        from clustkit.cluster.kmeans import kmeans

        return kmeans(features, n_groups, spherical=spherical, seed=seed, n_init=n_init or 1, backend="torch")


class OldShardGrouper(OldGrouper):
    accepts_shards = True  # 0.1 read ctx.grouping_shards


class OldEvaluator:
    def __init__(self, cfg: Any, ctx: Any):
        pass

    @hookimpl
    def evaluate(self, ctx: Any) -> Prediction:
        return Prediction(ctx.extract("cluster").argmax(1).numpy(), kind="old", space="cluster", rule="argmax")


class OldRefiner:
    """0.1 style: a second stage in after_training, its labels through a tryfirst evaluate."""

    def __init__(self, cfg: Any, ctx: Any):
        self.done = False

    @hookimpl
    def after_training(self, ctx: Any) -> None:
        self.done = True

    @hookimpl(tryfirst=True)
    def evaluate(self, ctx: Any) -> Any:
        return None


class OldPlugin:
    @hookimpl
    def register_components(self, registry: Any) -> None:
        registry.add("loss", "old_loss", OldLoss, LossConfig)
        registry.add("grouper", "old_grouper", OldGrouper, ComponentConfig)
        registry.add("grouper", "old_shard_grouper", OldShardGrouper, ComponentConfig)
        registry.add("evaluator", "old_eval", OldEvaluator, ComponentConfig)
        registry.add("refiner", "old_refiner", OldRefiner, ComponentConfig)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(TINY_CC.replace("epochs = 2", "epochs = 1"))
    return path


def test_0_1_losses_groupers_and_evaluators_keep_working(recipe: Path, plugin_set, tmp_path: Path) -> None:
    ps = plugin_set(("old", OldPlugin()))
    summary = run_recipe(recipe, ps, tmp_path / "run", ['losses.old={name="old_loss"}', 'grouping={name="old_grouper"}',
                                                          'evaluation={name="old_eval"}'])
    assert summary["selection"]["recipe"] == "old:cluster"
    assert "old_grouper:backbone" in summary["candidates"]  # the candidates went through the old grouper
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"instance", "cluster", "old"} <= set(line["losses"])


def test_a_0_1_refiner_fails_at_build_saying_to_write_refine(recipe: Path, plugin_set) -> None:
    ps = plugin_set(("old", OldPlugin()))
    with pytest.raises(PluginError) as err:
        run_recipe(recipe, ps, None, ['refine.stage={name="old_refiner"}'])
    text = str(err.value)
    assert "refiner 'old_refiner' of [refine.stage] (plugin 'old'" in text and "test_compat.py" in text
    assert "refine(previous, ctx)" in text and "move the body of after_training into refine" in text


def test_a_0_1_shard_grouper_fails_at_build_saying_to_take_rows(recipe: Path, plugin_set) -> None:
    ps = plugin_set(("old", OldPlugin()))
    with pytest.raises(PluginError, match=r"accepts_shards, but its assign_groups takes no 'rows'.*rows is not None"):
        run_recipe(recipe, ps, None, ['grouping={name="old_shard_grouper"}'])


def test_a_0_1_prediction_says_which_fields_to_write() -> None:
    with pytest.raises(TypeError, match=r"write kind='kmeans', space='projector'"):
        Prediction(np.zeros(3, np.int64), source="kmeans:projector")
    assert Prediction(np.zeros(3, np.int64), kind="kmeans", space="projector").name == "kmeans:projector"


def test_a_0_1_plugin_module_implementing_a_step_hook_is_skipped_saying_what_it_became(plugin_set) -> None:
    class StepHooks:  # a plugin module of 0.1 may have implemented compute_loss for every run
        @hookimpl
        def compute_loss(self, out: Any, ctx: Any) -> Any:
            return None

    ps = plugin_set()
    with pytest.raises(PluginError, match=r"implements the hook 'compute_loss'.*a loss component's compute_loss"):
        ps.register(StepHooks(), name="stepper")
    assert "stepper" not in ps.info and ps.pm.get_plugin("stepper") is None


def test_a_component_without_its_role_method_names_the_plugin_and_key(recipe: Path, plugin_set) -> None:
    class NoMethod:
        def __init__(self, cfg: Any, ctx: Any):
            pass

    class Plugin:
        @hookimpl
        def register_components(self, registry: Any) -> None:
            registry.add("loss", "no_method", NoMethod, LossConfig)

    ps = plugin_set(("lazy", Plugin()))
    with pytest.raises(PluginError, match=r"loss 'no_method' of \[losses.x\] \(plugin 'lazy', registered at "
                                          r".*test_compat.py:\d+\) built a NoMethod, which has no "
                                          r"compute_loss\(out, ctx\) method"):
        run_recipe(recipe, ps, None, ['losses.x={name="no_method"}'])


def test_a_method_asking_for_an_argument_the_engine_does_not_pass_is_named(recipe: Path, plugin_set) -> None:
    class Greedy:
        def __init__(self, cfg: Any, ctx: Any):
            pass

        def compute_loss(self, out: Any, ctx: Any, optimizer: Any) -> Any:
            return None

    class Plugin:
        @hookimpl
        def register_components(self, registry: Any) -> None:
            registry.add("loss", "greedy", Greedy, LossConfig)

    ps = plugin_set(("greedy", Plugin()))
    with pytest.raises(PluginError, match=r"compute_loss\(out, ctx, optimizer\) asks for 'optimizer'"):
        run_recipe(recipe, ps, None, ['losses.x={name="greedy"}'])
