"""Every hook spec has a test here (``test_hook_<name>``) and a section in docs/hooks.md."""

from __future__ import annotations

import importlib.util
import inspect
import json
from typing import Any

import pytest

from clustkit.plugin_system import hookspecs
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
[grouping]
name = "recorder_grouper"
[evaluation]
name = "recorder_eval"
"""


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
    return {"calls": first, "resume_calls": list(rec.CALLS), "summary": summary, "summary2": summary2, "out": out}


def names(calls: list[tuple[str, Any]], name: str) -> list[Any]:
    return [arg for n, arg in calls if n == name]


def test_hook_register_components(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "register_components") == [None]


def test_hook_make_views(recorded: dict[str, Any]) -> None:
    args = names(recorded["calls"], "make_views")
    assert True in args and False in args  # training views and the evaluation view


def test_hook_build_heads(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "build_heads") == [16]  # once, with the backbone's out_dim


def test_hook_compute_loss(recorded: dict[str, Any]) -> None:
    calls = names(recorded["calls"], "compute_loss")
    # 1797 // 128 = 14 steps per epoch, 2 epochs; the weight-0 copy is never called
    assert len(calls) == 28 and set(calls) == {("weak1", "weak2")}


def test_hook_update_prototypes(recorded: dict[str, Any]) -> None:
    calls = names(recorded["calls"], "update_prototypes")
    assert len(calls) == 28 and not any(calls)  # after every step, without gradients


def test_hook_assign_groups(recorded: dict[str, Any]) -> None:
    (evaluation, *candidates) = names(recorded["calls"], "assign_groups")
    assert evaluation == ((1797, 16), 10, False)  # the recipe's evaluator
    # then the run's candidates: spherical k-means on the backbone and on each head (the
    # recorder's own 3-d "extra" head included)
    assert sorted(candidates) == [((1797, 3), 10, True), ((1797, 8), 10, True), ((1797, 16), 10, True)]


def test_hook_candidates(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "candidates") == ["post"]  # once, at the end
    summary = json.loads((recorded["out"] / "summary.json").read_text())
    assert set(summary["candidates"]) == {"recorder", "kmeans:backbone", "kmeans:instance", "kmeans:extra",
                                          "recorder:shifted"}
    rows = summary["candidates"]
    assert rows["recorder:shifted"]["acc"] == pytest.approx(rows["recorder"]["acc"])  # same partition
    assert rows["recorder"]["recipe"] is True and summary["selection"]["recipe"] == "recorder"
    assert summary["selection"]["chosen"] in rows and summary["evaluation"] == summary["selection"]["chosen"]


def test_hook_evaluate(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "evaluate") == [1797]
    assert recorded["summary"]["selection"]["recipe"] == "recorder"  # the output is chosen among candidates
    assert 0 <= recorded["summary"]["acc"] <= 1


def test_hook_on_run_start(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "on_run_start") == [0]
    assert names(recorded["resume_calls"], "on_run_start") == [2]  # after restoring 2 finished epochs


def test_hook_on_epoch_start(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "on_epoch_start") == [0, 1]
    assert names(recorded["resume_calls"], "on_epoch_start") == [2]


def test_hook_on_epoch_end(recorded: dict[str, Any]) -> None:
    logs = names(recorded["calls"], "on_epoch_end")
    assert len(logs) == 2 and "rec" in logs[0] and "loss" in logs[0]  # the term is named after [losses.rec]
    lines = [json.loads(l) for l in (recorded["out"] / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["losses"]["recorder_updates"] == 42.0  # what the hook added was recorded


def test_hook_after_training(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "after_training") == ["post"]


def test_hook_on_run_end(recorded: dict[str, Any]) -> None:
    assert len(names(recorded["calls"], "on_run_end")) == 1
    saved = json.loads((recorded["out"] / "summary.json").read_text())
    assert saved["recorder"] == "seen"


def test_hook_checkpoint_state(recorded: dict[str, Any]) -> None:
    assert names(recorded["calls"], "checkpoint_state")[:2] == [1, 2]


def test_hook_load_checkpoint_state(recorded: dict[str, Any]) -> None:
    assert names(recorded["resume_calls"], "load_checkpoint_state") == [28]


def spec_names() -> list[str]:
    return sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "clustkit_spec"))


def test_every_hook_has_a_test() -> None:
    here = {n[len("test_hook_"):] for n in globals() if n.startswith("test_hook_")}
    assert set(spec_names()) == here


def test_every_hook_is_documented() -> None:
    doc = (REPO / "docs" / "hooks.md").read_text()
    missing = [n for n in spec_names() if f"### {n}(" not in doc]
    assert not missing
