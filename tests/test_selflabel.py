"""The self-labelling stage: its selection rules against naive versions, its loss against the
formula, and tiny end-to-end runs after CC, after DigPro (k-means labels: the stage adds the head)
and after IcicleGCN's GCN stage, with a resume in the middle of the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clustkit_selflabel.refiner import balanced_confident, balanced_nll, centroid_confidence, top_per_cluster
from conftest import REPO, TINY_CC, run_recipe

STAGE = ['refine.selflabel={name="selflabel", steps=12, reselect_every=4, threshold=0.0, log_every=0}']


def test_balanced_confident_keeps_the_most_confident_of_each_cluster() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 2, -1])
    confidence = np.array([0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 1.0])
    assert balanced_confident(clusters, confidence, 3, per_cluster=2).tolist() == [0, 2, 3, 4, 5]
    assert balanced_confident(clusters, confidence, 3, per_cluster=2, threshold=0.65).tolist() == [0, 2, 4]


def test_top_per_cluster_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    chosen, targets = top_per_cluster(probs, per_cluster=6, threshold=0.3, exclude=[3])
    claims: dict[int, tuple[float, int]] = {}
    for k in range(4):
        for i in sorted((i for i in range(50) if i != 3), key=lambda i: -probs[i, k])[:6]:  # 3: unreadable
            if probs[i, k] >= 0.3 and (i not in claims or probs[i, k] > claims[i][0]):
                claims[i] = (probs[i, k], k)
    assert chosen.tolist() == sorted(claims)
    assert targets.tolist() == [claims[i][1] for i in sorted(claims)]


def test_centroid_confidence_is_the_cosine_to_the_cluster_mean() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    clusters = np.array([0, 0, 1])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean = unit[:2].mean(0) / np.linalg.norm(unit[:2].mean(0))
    np.testing.assert_allclose(centroid_confidence(x, clusters, 2), [unit[0] @ mean, unit[1] @ mean, 1.0])


def test_balanced_nll_against_the_formula_values_and_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 3, requires_grad=True)
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    loss = balanced_nll(torch.softmax(logits, 1), targets, 3, balance=True)
    # naive: weight_c = N / (K · n_c); loss = Σ_i w_{y_i} (−log p_{i,y_i}) / Σ_i w_{y_i}
    logits2 = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(logits2, 1)
    counts = {0: 5, 1: 2, 2: 1}
    w = torch.tensor([8 / (3 * counts[int(t)]) for t in targets])
    naive = (w * -torch.log(p[torch.arange(8), targets])).sum() / w.sum()
    torch.testing.assert_close(loss, naive)
    loss.backward()
    naive.backward()
    torch.testing.assert_close(logits.grad, logits2.grad)
    plain = balanced_nll(torch.softmax(logits.detach(), 1), targets, 3, balance=False)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits.detach(), targets))


def _tiny(tmp_path: Path, text: str = TINY_CC) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_after_cc_the_stage_trains_its_head_and_becomes_a_candidate(plugin_set, tmp_path: Path) -> None:
    summary = run_recipe(_tiny(tmp_path), plugin_set(), tmp_path / "run", STAGE)
    rows = summary["candidates"]
    assert summary["selection"]["recipe"] == "argmax:selflabel" and rows["argmax:selflabel"]["recipe"]
    assert {"argmax:cluster", "kmeans:selflabel"} <= set(rows)
    assert summary["selflabel_steps"] == 12 and "(run.select)" in summary["selflabel_start"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("heads.selflabel.") for k in state["model"])  # saved with the network
    history = state["components"]["refine.selflabel"]["history"]
    assert [h["step"] for h in history if "selected" in h] == [0, 4, 8, 12]  # start, then each re-selection
    assert all(h["selected"] > 0 for h in history if "selected" in h)


@pytest.mark.slow
def test_output_evaluation_reclusters_the_retrained_network_with_the_recipes_evaluation(plugin_set,
                                                                                       tmp_path: Path) -> None:
    from clustkit.trained.loaded import load_run

    recipe = _tiny(tmp_path)
    stage = [STAGE[0].replace("}", ', output="evaluation", backbone_lr_mult=1.0}')]
    keep = ['run.select="recipe"']  # the output is the recipe's evaluation, not the label-free choice
    run_recipe(recipe, plugin_set(), tmp_path / "before", keep)
    summary = run_recipe(recipe, plugin_set(), tmp_path / "run", [*keep, *stage])
    assert summary["selection"]["recipe"] == "argmax:cluster"  # TINY_CC's evaluation, not the stage's head
    assert summary["selflabel_steps"] == 12 and "argmax:selflabel" in summary["candidates"]
    run = load_run(tmp_path / "run")
    labels = run.run_clusters()
    np.testing.assert_array_equal(labels, run.features("cluster").argmax(1))  # of the network after the stage
    assert not np.array_equal(labels, load_run(tmp_path / "before").run_clusters())


@pytest.mark.slow
def test_an_interrupted_stage_resumes_to_the_same_result(plugin_set, tmp_path: Path) -> None:
    recipe = _tiny(tmp_path)
    full = run_recipe(recipe, plugin_set(), tmp_path / "full", STAGE)
    ps = plugin_set()
    from clustkit.engine.state import RunState

    original = RunState.save_checkpoint

    def stop_after_first_round(self: RunState) -> None:
        original(self)
        if self.phase == "post" and self.components.by_key["refine.selflabel"].step == 4:
            raise KeyboardInterrupt  # killed right after the stage's first checkpoint

    RunState.save_checkpoint = stop_after_first_round  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, ps, tmp_path / "killed", STAGE)
    finally:
        RunState.save_checkpoint = original  # type: ignore[method-assign]
    resumed = run_recipe(recipe, plugin_set(), tmp_path / "killed", STAGE, resume=True)
    assert resumed["acc"] == pytest.approx(full["acc"], abs=1e-9)
    assert resumed["candidates"]["argmax:selflabel"] == pytest.approx(full["candidates"]["argmax:selflabel"])


@pytest.mark.slow
def test_after_digpro_the_stage_attaches_the_head_kmeans_runs_lack(plugin_set, tmp_path: Path) -> None:
    digpro = REPO / "recipes" / "digpro.toml"
    out = tmp_path / "run"
    summary = run_recipe(digpro, plugin_set(), out, [
        "run.epochs=2", "backbone.width=8", "backbone.out_dim=32", "heads.projector.hidden=32",
        "heads.projector.out_dim=16", "heads.predictor.hidden=32", *STAGE])
    assert summary["selection"]["recipe"] == "argmax:selflabel"
    assert summary["assign"]["rule"] in ("argmax", "cosine_centroid")
    assert "kmeans:momentum/projector" in summary["candidates"]  # k-means on the target projector, unvoted
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["selected"] == summary["selection"]["chosen"]


@pytest.mark.slow
def test_output_evaluation_gives_the_target_network_the_retrained_weights(plugin_set, tmp_path: Path) -> None:
    """DigPro's evaluation reads its target network, which the stage does not train."""
    tiny = ["run.epochs=2", "backbone.width=8", "backbone.out_dim=32", "heads.projector.hidden=32",
            "heads.projector.out_dim=16", "heads.predictor.hidden=32"]
    stage = [STAGE[0].replace("}", ', output="evaluation"}')]
    summary = run_recipe(REPO / "recipes" / "digpro.toml", plugin_set(), tmp_path / "run", [*tiny, *stage])
    assert summary["selection"]["recipe"] == "kmeans:momentum/projector+vote"  # DigPro's evaluation, run again
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    online, target = state["model"], state["momentum_model"]
    assert target and set(target) <= set(online)
    for key, value in target.items():
        torch.testing.assert_close(value, online[key])
    head_only = run_recipe(REPO / "recipes" / "digpro.toml", plugin_set(), tmp_path / "head", [*tiny, *STAGE])
    assert head_only["selection"]["recipe"] == "argmax:selflabel"
    state = torch.load(tmp_path / "head" / "checkpoints" / "last.pt", weights_only=False)
    assert any(not torch.equal(v, state["model"][k]) for k, v in state["momentum_model"].items())


@pytest.mark.slow
def test_after_the_gcn_stage_it_starts_from_the_gcn_labels(plugin_set, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_recipe(REPO / "recipes" / "iciclegcn.toml", plugin_set(), out, [
        "run.epochs=1", "backbone.width=8", "backbone.out_dim=32", "heads.instance.hidden=32",
        "heads.cluster.hidden=[32,32,64]", "refine.gcn.iterations=4", "refine.gcn.log_every=0",
        "refine.gcn.kmeans_n_init=2", "refine.gcn.k_b=5",
        'refine.selflabel={name="selflabel", start="previous", steps=8, reselect_every=4, log_every=0}'])
    assert summary["selflabel_start"] == "iciclegcn_gcn:mean"  # the GCN stage ran first, in recipe order
    assert summary["selection"]["recipe"] == "argmax:selflabel"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["components"]
    assert state["refine.gcn"]["iteration"] == 4 and state["refine.selflabel"]["step"] == 8
    assert {"iciclegcn_gcn:mean", "argmax:selflabel"} <= set(summary["candidates"])


def test_a_head_name_the_recipe_already_uses_is_refused(plugin_set, tmp_path: Path) -> None:
    from clustkit.engine.run import Run
    from clustkit.errors import RecipeError
    from clustkit.recipe import load

    ps = plugin_set()
    recipe = load(_tiny(tmp_path), ps.registry, ['refine.selflabel={name="selflabel", head="cluster"}'])
    with pytest.raises(RecipeError, match="refine.selflabel.*already a \\[heads.cluster\\]"):
        Run(recipe, ps, None).build()
