"""The ``manifold`` plugin (UMAP + GMM evaluation, N2D): it finds curved clusters that k-means
cuts, is deterministic for a seed (resume equality), and works as a run's evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CC, run_recipe


def _circles(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric rings in 8-D (embedded by a fixed rotation): k-means splits them in halves."""
    from sklearn.datasets import make_circles

    x, y = make_circles(n, factor=0.4, noise=0.03, random_state=seed)
    rot = np.linalg.qr(np.random.default_rng(seed).normal(size=(8, 8)))[0]
    return np.hstack([x, np.zeros((n, 6))]) @ rot, y


def test_umap_and_a_gmm_separate_rings_that_kmeans_cuts() -> None:
    from sklearn.cluster import KMeans

    from clustkit.cluster.metrics import cluster_acc
    from clustkit_manifold.evaluator import cluster_embedding, embed

    x, y = _circles()
    assert cluster_acc(y, KMeans(2, n_init=5, random_state=0).fit_predict(x)) < 0.75
    z = embed(x.astype(np.float32), 2, 15, 0.0, "euclidean", seed=0)
    labels, conf, fit = cluster_embedding(z, 2, "gmm", 3, seed=0)
    assert cluster_acc(y, labels) > 0.99 and conf.shape == (len(x),) and np.isfinite(fit)
    km_labels, _, _ = cluster_embedding(z, 2, "kmeans", 3, seed=0)
    assert cluster_acc(y, km_labels) > 0.99
    again = embed(x.astype(np.float32), 2, 15, 0.0, "euclidean", seed=0)
    np.testing.assert_array_equal(z, again)  # a fixed seed: the same embedding (what resume needs)


def test_items_outside_the_sample_take_their_neighbours_majority() -> None:
    from clustkit.cluster.votes import extend_by_neighbors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    fitted = np.arange(0, 40, 2)
    labels = rng.integers(0, 3, len(fitted))
    got, share = extend_by_neighbors(x, fitted, labels, 5, 3, metric="euclidean")
    np.testing.assert_array_equal(got[fitted], labels)
    assert (share[fitted] == 1).all() and ((share > 0) & (share <= 1)).all()
    lab = dict(zip(fitted.tolist(), labels.tolist()))
    for i in range(1, 40, 2):  # naive: sort the fitted items by distance, count the first 5 votes
        order = sorted(fitted.tolist(), key=lambda j: float(((x[i] - x[j]) ** 2).sum()))[:5]
        votes = [lab[j] for j in order]
        best = max(votes.count(c) for c in set(votes))
        assert got[i] == next(v for v in votes if votes.count(v) == best) and share[i] == best / 5


def test_the_neighbour_vote_is_rounds_of_each_items_own_neighbours_majority() -> None:
    from clustkit.cluster.votes import neighbor_vote

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    got, share = neighbor_vote(x, labels, 5, 2, 3, metric="euclidean")
    want = labels.copy()
    for _ in range(2):  # naive: each item's 5 nearest others (itself excluded), ties to the nearest tied vote
        before = want.copy()
        for i in range(40):
            order = sorted((j for j in range(40) if j != i), key=lambda j: float(((x[i] - x[j]) ** 2).sum()))[:5]
            votes = [int(before[j]) for j in order]
            best = max(votes.count(c) for c in set(votes))
            want[i] = next(v for v in votes if votes.count(v) == best)
    np.testing.assert_array_equal(got, want)
    assert ((share >= 0.2) & (share <= 1)).all()


def test_the_vote_mends_items_placed_in_another_clusters_neighbourhood() -> None:
    from clustkit.cluster.votes import neighbor_vote

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.3, (100, 2)), rng.normal(5, 0.3, (100, 2))]).astype(np.float32)
    truth = np.repeat([0, 1], 100)
    wrong = truth.copy()
    wrong[[3, 50, 120, 180]] = 1 - wrong[[3, 50, 120, 180]]
    got, share = neighbor_vote(x, wrong, 10, 3, 2, metric="euclidean")
    np.testing.assert_array_equal(got, truth)
    assert share.min() >= 0.8


@pytest.mark.slow
def test_vote_k_turns_the_vote_on_in_the_evaluator(tmp_path: Path) -> None:
    from clustkit.plugin_system.manager import get_plugins

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_CC)
    summaries = {}
    for vote in (0, 10):
        out = tmp_path / f"vote{vote}"
        run_recipe(recipe, get_plugins(), out, overrides=[
            "run.plugins=['manifold']",
            f'evaluation={{name="umap", n_neighbors=10, n_init=2, fit_on=600, n_runs=1, vote_k={vote}}}',
            'run.select="recipe"', "run.report=false"])
        summaries[vote] = (json.loads((out / "summary.json").read_text()),
                           np.loadtxt(out / "assignments.csv", delimiter=",", skiprows=1, usecols=1, dtype=np.int64))
    from clustkit.cluster.votes import neighbor_vote
    from clustkit.trained.loaded import load_run

    feats = load_run(tmp_path / "vote0").features("backbone")
    want, _ = neighbor_vote(feats, summaries[0][1], 10, 3, 10)
    np.testing.assert_array_equal(summaries[10][1], want)   # the same training: the vote on the unvoted labels
    assert (want != summaries[0][1]).any()                   # and the vote changed some of them


def test_the_consensus_run_is_the_one_that_agrees_most_with_the_others() -> None:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from clustkit_manifold.evaluator import consensus_run

    rng = np.random.default_rng(0)
    good = rng.integers(0, 4, 200)
    merged = np.where(good == 3, 2, good)  # an unlucky layout: two clusters merged
    noisy = good.copy()
    noisy[:20] = rng.integers(0, 4, 20)
    for runs in ([merged, (good + 1) % 4, noisy], [good, merged, noisy], [good, good]):
        got, score = consensus_run(runs)
        means = [np.mean([nmi(a, b) for j, b in enumerate(runs) if j != i]) for i, a in enumerate(runs)]
        assert got == int(np.argmax(means)) and score == pytest.approx(means[got], abs=1e-6)
    assert consensus_run([merged, (good + 1) % 4, noisy])[0] == 1  # the relabelled good run, not the merge
    assert consensus_run([good]) == (0, None)


@pytest.mark.parametrize("fit_on", [None, 150])
def test_each_run_of_a_sampled_evaluation_embeds_its_own_sample(monkeypatch, fit_on) -> None:
    from types import SimpleNamespace

    import torch

    import clustkit_manifold.evaluator as E
    from clustkit_manifold import UMAPEvalConfig

    x, _ = _circles(400)
    seen: list[tuple[np.ndarray, int]] = []

    def fake_embed(rows, dims, n_neighbors, min_dist, metric, seed, graph=None):
        seen.append((rows.copy(), seed))
        return rows[:, :dims].astype(np.float64)

    monkeypatch.setattr(E, "embed", fake_embed)
    cfg = UMAPEvalConfig(name="umap", n_runs=3, fit_on=fit_on, n_init=1, n_components=2, cluster="kmeans")
    ctx = SimpleNamespace(extract=lambda head, momentum: torch.from_numpy(x.astype(np.float32)), n_clusters=2, seed=7,
                          vote=lambda pred, cfg, **_: pred)
    pred = E.UMAPEvaluator(cfg, None).evaluate(ctx)
    assert [seed for _, seed in seen] == [7, 8, 9] and pred.labels.shape == (400,)
    samples = [{tuple(r) for r in rows.round(6).tolist()} for rows, _ in seen]
    if fit_on is None:  # every layout embeds all the items
        assert all(len(s) == 400 for s in samples) and samples[0] == samples[1] == samples[2]
    else:  # each run its own draw of 150 (seed 7, 8, 9): a bad sample is outvoted, not repeated
        assert all(len(s) == 150 for s in samples) and len({frozenset(s) for s in samples}) == 3
        first = np.sort(np.random.default_rng(7).choice(400, 150, replace=False))
        assert samples[0] == {tuple(r) for r in x[first].astype(np.float32).round(6).tolist()}


@pytest.mark.slow
def test_a_run_with_the_umap_evaluation(tmp_path: Path) -> None:
    import clustkit
    from clustkit.plugin_system.manager import get_plugins

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_CC)
    out = tmp_path / "run"
    run_recipe(recipe, get_plugins(), out, overrides=[
        "run.plugins=['manifold']", 'evaluation={name="umap", n_neighbors=10, n_init=2, fit_on=1200, n_runs=2}',
        'run.select="recipe"'])
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["candidates"]
    assert summary["selection"] == {**summary["selection"], "criterion": "recipe", "chosen": "umap:backbone"}
    assert rows["umap:backbone"]["recipe"] and rows["umap:backbone"]["space"] == "backbone"
    assert summary["umap_runs"] == 2 and summary["umap_chosen_run"] in (0, 1) and 0 < summary["umap_agreement"] <= 1
    assert {"argmax:cluster", "kmeans:backbone"} <= set(rows)  # "recipe" still lists the other candidates
    assert summary["acc"] == rows["umap:backbone"]["acc"] and summary["assign"]["rule"] == "cosine_centroid"
    clusters = np.loadtxt(out / "assignments.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
    run = clustkit.load_run(out)
    evaluated = run.evaluate(probes=False)  # the checkpoint re-evaluated: UMAP is again the recipe's candidate
    assert evaluated["selection"]["chosen"] == "umap:backbone"
    # a new image goes to the nearest cluster mean in (cosine) backbone space
    feats = run.features("backbone")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    means = np.stack([unit[clusters == c].mean(0) for c in range(10)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    placed, _, _ = run.assign(feats)
    np.testing.assert_array_equal(placed, (unit @ means.T).argmax(1))


def test_a_run_given_one_thread_keeps_one_after_its_umap_evaluation(tmp_path: Path) -> None:
    """numba's OpenMP start-up during a UMAP embedding reset the process's thread count (torch's
    included) to every core, so a run given one thread (bench --threads 1) trained on all of
    them after its first UMAP evaluation. A fresh process: numba starts up once per process."""
    (tmp_path / "tiny.toml").write_text(TINY_CC)
    code = ("import sys, torch\n"
            "torch.set_num_threads(1)\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from pathlib import Path\n"
            "from conftest import run_recipe\n"
            "from clustkit.plugin_system.manager import get_plugins\n"
            f"run_recipe(Path({str(tmp_path / 'tiny.toml')!r}), get_plugins(), Path({str(tmp_path / 'run')!r}),\n"
            "           overrides=[\"run.plugins=['manifold']\", "
            "'evaluation={name=\"umap\", n_neighbors=10, n_init=2}',\n"
            "                      'run.report=false'])\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
