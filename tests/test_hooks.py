"""Every hook spec has a test here (``test_hook_<name>``) and a section in docs/hooks.md; every
component method the engine calls has one too (``test_component_<method>``): a recorder plugin's
components run a real tiny recipe and record each call, its order and its arguments."""

from __future__ import annotations

import importlib.util
import inspect
import json
from typing import Any

import pytest

from clustkit.plugin_system import hookspecs
from clustkit.plugin_system.interfaces import OPTIONAL, ROLES
from conftest import REPO, run_recipe

RECIPE = """
[run]
seed = 0
epochs = 2
batch_size = 128
checkpoint_every = 1
[data]
name = "digits"
[backbone]
name = "small_cnn"
width = 8
out_dim = 16
[heads.instance]
name = "mlp"
hidden = [16]
out_dim = 8
[views]
name = "recorder_views"
[losses.rec]
name = "recorder_loss"
[losses.off]
name = "recorder_loss"
weight = 0
[losses.second]
name = "recorder_loss"
weight = 2
[grouping]
name = "recorder_grouper"
[evaluation]
name = "recorder_eval"
[refine.first]
name = "recorder_refine"
[refine.second]
name = "recorder_refine"
"""
STEPS = 2 * (1797 // 128)  # two epochs of 14 steps


def _load_recorder() -> Any:
    spec = importlib.util.spec_from_file_location("recorder_plugin", REPO / "tests" / "plugins" / "recorder.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from clustkit.plugin_system.manager import PluginSet

    rec = _load_recorder()
    ps = PluginSet()
    ps.load_entry_points()
    ps.register(rec, name="recorder")
    tmp = tmp_path_factory.mktemp("hooks")
    path = tmp / "recipe.toml"
    path.write_text(RECIPE)
    out = tmp / "run"
    summary = run_recipe(path, ps, out)
    first = list(rec.CALLS)
    # resume the finished run's checkpoint with more epochs to exercise load_checkpoint_state
    rec.CALLS.clear()
    summary2 = run_recipe(path, ps, out, overrides=["run.epochs=3"], resume=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"calls": first, "resume_calls": list(rec.CALLS), "summary": summary, "summary2": summary2, "out": out,
            "metrics": metrics}


def names(calls: list[tuple[str, Any]], name: str) -> list[Any]:
    return [arg for n, arg in calls if n == name]


# --- hooks: registration and lifecycle notifications -------------------------------------------


def test_hook_register_components(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "register_components") == [None]


def test_hook_on_run_start(recorded: dict[str, Any]) -> None:
    # components are notified in recipe order (the weight-0 loss is not built)
    assert names(recorded["calls"], "on_run_start") == [("losses.rec", 0), ("losses.second", 0)]
    assert names(recorded["resume_calls"], "on_run_start") == [("losses.rec", 2), ("losses.second", 2)]


def test_hook_on_epoch_start(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "on_epoch_start") == [("losses.rec", 0), ("losses.second", 0),
                                                          ("losses.rec", 1), ("losses.second", 1)]
    assert names(recorded["resume_calls"], "on_epoch_start") == [("losses.rec", 2), ("losses.second", 2)]


def test_hook_on_epoch_end(recorded: dict[str, Any]) -> None:
    calls = names(recorded["calls"], "on_epoch_end")
    assert [(k, e) for k, e, _ in calls] == [("losses.rec", 0), ("losses.second", 0),
                                              ("losses.rec", 1), ("losses.second", 1)]  # ctx.epoch is 0-based here
    assert {"rec", "second", "loss"} <= set(calls[0][2])  # the terms, named after [losses.rec] / [losses.second]
    assert "rec_updates" in calls[1][2]  # the second component sees what the first added
    first = recorded["metrics"][0]
    # what the hooks added is filed apart from the losses (and not plotted as one)
    assert first["values"] == {"rec_updates": 14.0, "second_updates": 14.0}
    assert set(first["losses"]) == {"rec", "second", "loss"}


def test_hook_after_training(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "after_training") == [("losses.rec", STEPS), ("losses.second", STEPS)]
    # before the refinement stages
    order = [n for n, _ in recorded["calls"] if n in ("after_training", "refine")]
    assert order == ["after_training", "after_training", "refine", "refine"]


def test_hook_on_run_end(recorded: dict[str, Any]) -> None:
    acc = recorded["summary"]["acc"]
    assert names(recorded["calls"], "on_run_end") == [("losses.rec", acc), ("losses.second", acc), ("plugin", "seen")]
    saved = json.loads((recorded["out"] / "summary.json").read_text())
    assert saved["recorder"] == "seen"


def test_hook_checkpoint_state(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "checkpoint_state")[:4] == [("losses.rec", 1), ("losses.second", 1),
                                                                ("losses.rec", 2), ("losses.second", 2)]


def test_hook_load_checkpoint_state(recorded: dict[str, Any]) -> None:
    assert names(recorded["resume_calls"], "load_checkpoint_state") == [("losses.rec", STEPS),
                                                                        ("losses.second", STEPS)]


# --- component methods, called directly by recipe key ---------------------------------------


def test_component_make_views(recorded: dict[str, Any]) -> None:
    args = names(recorded["calls"], "make_views")
    assert True in args and False in args  # training views and the evaluation view


def test_component_build_heads(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "build_heads") == [("losses.rec", 16), ("losses.second", 16)]


def test_component_compute_loss(recorded: dict[str, Any]) -> None:
    calls = names(recorded["calls"], "compute_loss")
    # called in recipe order every step; the weight-0 copy is never built nor called
    assert calls == [("losses.rec", ("weak1", "weak2")), ("losses.second", ("weak1", "weak2"))] * STEPS


def test_loss_terms_are_logged_weighted(recorded: dict[str, Any]) -> None:
    # both components compute the same value on the same step; [losses.second] has weight 2
    for line in recorded["metrics"][:2]:
        assert line["losses"]["second"] == pytest.approx(2 * line["losses"]["rec"], rel=1e-6)
        assert line["losses"]["loss"] == pytest.approx(3 * line["losses"]["rec"], rel=1e-6)


def test_component_update_prototypes(recorded: dict[str, Any]) -> None:
    calls = names(recorded["calls"], "update_prototypes")
    assert calls == [("losses.rec", False), ("losses.second", False)] * STEPS  # after every step, no gradients


def test_component_assign_groups(recorded: dict[str, Any]) -> None:
    (evaluation, *candidates) = names(recorded["calls"], "assign_groups")
    assert evaluation == ((1797, 16), 10, False)  # the recipe's evaluator
    # then the run's candidates: the grouper (spherical) on the backbone and on each head
    assert sorted(candidates) == [((1797, 3), 10, True), ((1797, 3), 10, True), ((1797, 8), 10, True),
                                  ((1797, 16), 10, True)]


def test_component_evaluate(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "evaluate") == [1797]


def test_component_refine(recorded: dict[str, Any]) -> None:
    # the stages run in recipe order, each on the previous one's output
    assert names(recorded["calls"], "refine") == [("refine.first", "recorder:backbone"),
                                                  ("refine.second", "refined:first")]
    assert recorded["summary"]["selection"]["recipe"] == "refined:second"


def test_component_candidates(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "candidates") == [STEPS]  # once, at the end
    summary = json.loads((recorded["out"] / "summary.json").read_text())
    # the grouper's candidates are named after it, not "kmeans"
    assert set(summary["candidates"]) == {"refined:second", "recorder_grouper:backbone", "recorder_grouper:instance",
                                          "recorder_grouper:extra_rec", "recorder_grouper:extra_second",
                                          "recorder:shifted"}
    rows = summary["candidates"]
    assert rows["recorder:shifted"]["acc"] == pytest.approx(rows["refined:second"]["acc"])  # same partition
    assert rows["refined:second"]["recipe"] is True
    assert summary["selection"]["chosen"] in rows and summary["evaluation"] == summary["selection"]["chosen"]


# --- every hook and every method is tested and documented -----------------------------------


def spec_names() -> list[str]:
    return sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "clustkit_spec"))


def component_methods() -> list[str]:
    return sorted({method for method, _ in ROLES.values()} | set(OPTIONAL))


def test_every_hook_and_component_method_has_a_test() -> None:
    assert {n[len("test_hook_"):] for n in globals() if n.startswith("test_hook_")} == set(spec_names())
    assert ({n[len("test_component_"):] for n in globals() if n.startswith("test_component_")}
            == set(component_methods()))


def test_every_hook_and_component_method_is_documented() -> None:
    hooks = (REPO / "docs" / "hooks.md").read_text()
    assert not [n for n in spec_names() if f"### {n}(" not in hooks]
    api = (REPO / "docs" / "api.md").read_text()
    assert not [m for m in component_methods() if f"`{m}(" not in api]
