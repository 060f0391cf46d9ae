"""Label-free model selection: the scores against a naive reference, the rules of the choice, and
a run whose choice stays the same with its labels removed or shuffled."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from clustkit.cluster.selection import RECIPE_MARGIN, agreement_scores, select
from conftest import TINY_CC, run_recipe


def naive_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) / ((H(a) + H(b)) / 2), from the contingency table, with natural logs."""
    n = len(a)
    joint: dict[tuple[int, int], int] = {}
    for x, y in zip(a.tolist(), b.tolist()):
        joint[(x, y)] = joint.get((x, y), 0) + 1
    pa = {x: np.mean(a == x) for x in set(a.tolist())}
    pb = {y: np.mean(b == y) for y in set(b.tolist())}
    mi = sum(c / n * np.log((c / n) / (pa[x] * pb[y])) for (x, y), c in joint.items())
    h = lambda p: -sum(v * np.log(v) for v in p.values())  # noqa: E731
    denom = (h(pa) + h(pb)) / 2
    return float(mi / denom) if denom > 0 else 1.0


def test_agreement_is_the_mean_nmi_with_every_other_candidate() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    noisy = lambda p: np.where(rng.random(300) < p, rng.integers(0, 4, 300), truth)  # noqa: E731
    cands = {"argmax:c": noisy(0.1), "kmeans:c": noisy(0.2), "kmeans:backbone": noisy(0.3), "kmeans:i": noisy(0.5)}
    scores = agreement_scores(cands)
    for a in cands:
        expected = np.mean([naive_nmi(cands[a], cands[b]) for b in cands if b != a])
        assert scores[a] == pytest.approx(expected, abs=1e-6)
    assert agreement_scores({"alone": truth}) == {"alone": None}


def test_the_consensus_candidate_wins_unless_the_recipe_is_within_the_margin() -> None:
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(5), 60)
    flip = lambda p: np.where(rng.random(300) < p, rng.integers(0, 5, 300), truth)  # noqa: E731
    cands = {"recipe": flip(0.4), "good": flip(0.05), "other1": flip(0.2), "other2": flip(0.2)}
    chosen = select(cands, "agreement", recipe="recipe")
    assert chosen.chosen == "good" and "mean NMI" in chosen.reason
    assert chosen.scores["good"] - chosen.scores["recipe"] > RECIPE_MARGIN
    # the recipe's evaluation stays when another candidate beats it by no more than the margin
    near = {"recipe": truth.copy(), "first": truth.copy(), "third": flip(0.3)}
    near["recipe"][:1] = (near["recipe"][:1] + 1) % 5  # one item off the truth: scores a little lower
    kept = select(near, "agreement", recipe="recipe")
    assert 0 < kept.scores["first"] - kept.scores["recipe"] <= RECIPE_MARGIN
    assert kept.chosen == "recipe" and "within" in kept.reason
    assert select(cands, "recipe", recipe="recipe").chosen == "recipe"


def test_a_candidate_with_empty_clusters_is_never_chosen() -> None:
    truth = np.repeat(np.arange(4), 50)
    collapsed = np.where(truth == 3, 2, truth)  # cluster 3 empty: agrees well, but fills 3 of 4
    rng = np.random.default_rng(2)
    cands = {"collapsed": collapsed, "noisy": np.where(rng.random(200) < 0.3, rng.integers(0, 4, 200), truth),
             "noisy2": np.where(rng.random(200) < 0.3, 0, truth), "third": truth}
    chosen = select(cands, "agreement", recipe="noisy")
    assert chosen.chosen != "collapsed" and "collapsed" not in chosen.eligible
    assert "fewer than 4 clusters: collapsed" in chosen.reason and chosen.scores["collapsed"] is not None


def test_silhouette_criterion_takes_the_highest_silhouette() -> None:
    cands = {"a": np.array([0, 1, 0, 1]), "b": np.array([1, 0, 0, 1])}
    chosen = select(cands, "silhouette", recipe="a", silhouettes={"a": 0.1, "b": 0.4})
    assert chosen.chosen == "b"
    with pytest.raises(ValueError, match="agreement, neighbors, silhouette, recipe"):
        select(cands, "labels", recipe="a")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clustkit.plugin_system.manager import get_plugins

    root = tmp_path_factory.mktemp("selection")
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_CC)
    out = root / "run"
    run_recipe(recipe, get_plugins(), out, overrides=["run.epochs=3"])
    return out


def test_the_run_records_every_candidate_and_outputs_the_chosen_one(finished_run: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    rows, selection = summary["candidates"], summary["selection"]
    assert {"argmax:cluster", "kmeans:backbone", "kmeans:instance", "kmeans:cluster"} <= set(rows)
    assert rows["argmax:cluster"]["recipe"] is True and selection["recipe"] == "argmax:cluster"
    assert selection["criterion"] == "agreement" and selection["chosen"] in rows and selection["reason"]
    for row in rows.values():
        assert {"score", "size_entropy", "n_empty", "silhouette", "acc", "nmi", "ari", "ami"} <= set(row)
    chosen = rows[selection["chosen"]]
    assert summary["acc"] == chosen["acc"] and summary["evaluation"] == selection["chosen"]
    best = max(rows, key=lambda n: rows[n]["score"])  # the highest agreement, or the recipe's within the margin
    assert selection["chosen"] == best or rows[best]["score"] - rows["argmax:cluster"]["score"] <= 0.005
    final = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and final["selected"] == selection["chosen"] and final["candidates"] == rows


def test_the_choice_reads_no_labels(finished_run: Path) -> None:
    """The same choice, and the same label-free scores, with the labels removed or shuffled."""
    import clustkit

    summary = json.loads((finished_run / "summary.json").read_text())
    run = clustkit.load_run(finished_run)
    dataset = run.ctx.dataset
    real = dataset.labels.copy()
    records = {}
    for name, labels in (("real", real), ("removed", np.full_like(real, -1)),
                         ("shuffled", np.random.default_rng(0).permutation(real))):
        dataset.labels = labels
        records[name] = run.candidates()
    dataset.labels = real
    assert {r["selection"]["chosen"] for r in records.values()} == {summary["selection"]["chosen"]}
    label_free = lambda rec: {n: {k: v for k, v in row.items() if k not in ("acc", "nmi", "ari", "ami")}  # noqa: E731
                              for n, row in rec["candidates"].items()}
    assert label_free(records["real"]) == label_free(records["removed"]) == label_free(records["shuffled"])
    assert all("acc" not in row for row in records["removed"]["candidates"].values())


def test_assignments_and_predict_follow_the_chosen_candidate(finished_run: Path) -> None:
    import clustkit

    with (finished_run / "assignments.csv").open() as fh:
        written = np.array([int(r["cluster"]) for r in csv.DictReader(fh)])
    run = clustkit.load_run(finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert run.summary["assign"] == summary["assign"]
    predicted = run.predict(run.ctx.dataset).clusters
    assert np.mean(predicted == written) > 0.99  # a new image goes where the chosen clustering puts it


def test_neighbor_scores_against_a_naive_loop() -> None:
    from clustkit.cluster.selection import neighbor_scores

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    labels[:3] = -1  # items without a cluster count for neither side
    query = rng.choice(60, 20, replace=False)
    near = rng.integers(0, 60, (20, 5))
    same = total = 0
    for i, q in enumerate(query):
        for j in near[i]:
            if labels[q] >= 0 and labels[j] >= 0:
                total += 1
                same += labels[q] == labels[j]
    p = np.bincount(labels[labels >= 0]) / (labels >= 0).sum()
    chance = (p ** 2).sum()
    expected = (same / total - chance) / (1 - chance)
    got = neighbor_scores({"a": labels, "one": np.zeros(60, np.int64)}, query, near)
    assert got["a"] == pytest.approx(expected, abs=1e-6) and got["one"] is None


def test_the_neighbors_criterion_prefers_the_clustering_that_keeps_neighbourhoods() -> None:
    from clustkit.cluster.neighbors import knn

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 4)) * 0.1 + np.eye(4)[truth] * 3
    query = np.arange(0, 120, 3)
    _, near = knn(x, 5, rows=query)
    cut = truth.copy()
    cut[::2] = (cut[::2] + 1) % 3  # half of every cluster moved: neighbourhoods cut
    chosen = select({"cut": cut, "truth": truth}, "neighbors", recipe="cut", neighbors=(query, near))
    assert chosen.chosen == "truth" and chosen.scores["truth"] == pytest.approx(1.0)


def test_a_voted_evaluation_is_the_vote_on_the_unvoted_labels_in_the_space_asked_for(finished_run: Path) -> None:
    """head_argmax + vote_k: the evaluation's labels are the neighbour vote (in vote_features)
    of the head's argmax, and a new image goes to the nearest mean of the voted clusters."""
    import clustkit
    from clustkit.cluster.votes import neighbor_vote

    plain = clustkit.load_run(finished_run)
    argmax = plain.features("cluster").argmax(1)
    backbone = plain.features("backbone")
    voted = clustkit.load_run(finished_run, overrides=[
        'evaluation={name="head_argmax", head="cluster", vote_k=7, vote_rounds=2, vote_features="backbone"}'])
    pred = voted.ctx.evaluate()
    want, share = neighbor_vote(backbone, argmax, 7, 2, 10)
    np.testing.assert_array_equal(pred.labels, want)
    np.testing.assert_allclose(pred.scores, share)
    assert (want != argmax).any()  # the vote changed something, so the check above can fail
    assert pred.name == "argmax:cluster+vote" and pred.assign_space == "backbone" and pred.rule == "cosine_centroid"
    assert pred.space == "cluster" and pred.vote.space == "backbone"  # read the head, voted in the backbone
    assert pred.vote.changed == int((want != argmax).sum())
    unit = backbone / np.linalg.norm(backbone, axis=1, keepdims=True)
    means = np.stack([unit[want == c].mean(0) if (want == c).any() else np.full(unit.shape[1], np.inf)
                      for c in range(10)])  # an empty cluster's mean is inf: no image goes there
    np.testing.assert_allclose(pred.centroids, means, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("criterion", ["agreement", "recipe"])
def test_when_the_evaluation_votes_the_other_candidates_vote_too_unless_the_recipe_is_the_choice(
        finished_run: Path, criterion: str) -> None:
    import clustkit
    from clustkit.cluster.votes import neighbor_vote

    run = clustkit.load_run(finished_run, overrides=[
        'evaluation={name="kmeans", features="instance", vote_k=5}', f'run.select="{criterion}"'])
    record = run.candidates()
    names = set(record["candidates"])
    assert record["selection"]["recipe"] == "kmeans:instance+vote"
    if criterion == "agreement":  # like with like: every argmax / k-means candidate voted, in its own space
        assert names == {"kmeans:instance+vote", "argmax:cluster+vote", "kmeans:backbone+vote",
                         "kmeans:cluster+vote"}
        assert record["candidates"]["kmeans:backbone+vote"]["space"] == "backbone"
    else:  # the recipe's own is the output; the others are listed as they are, its unvoted twin too
        assert names == {"kmeans:instance+vote", "kmeans:instance", "argmax:cluster", "kmeans:backbone",
                         "kmeans:cluster"}
    if criterion == "agreement":  # a voted candidate is the vote on its unvoted labels, in its own space
        from clustkit.engine.evaluation import evaluation, run_candidates

        cands = run_candidates(run.state, evaluation(run.state), vote_cfg=run.ctx.recipe.evaluation)
        cluster = run.features("cluster")
        want, _ = neighbor_vote(cluster, cluster.argmax(1), 5, 3, 10)
        np.testing.assert_array_equal(cands["argmax:cluster+vote"].labels, want)
