"""Tests for clustkit.cluster.metrics: ACC against brute force, NMI/ARI against sklearn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clustkit.cluster.metrics import cluster_acc, cluster_sizes, evaluate_clustering


def brute_force_acc(labels: np.ndarray, pred: np.ndarray) -> float:
    """Max over all injective cluster->class maps (or class->cluster when fewer clusters)."""
    clusters, classes = np.unique(pred), np.unique(labels)
    best = 0
    if len(clusters) <= len(classes):
        for perm in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, perm))
            best = max(best, sum(mapping[p] == y for p, y in zip(pred, labels)))
    else:
        for perm in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(perm, classes))
            best = max(best, sum(mapping.get(p, -1) == y for p, y in zip(pred, labels)))
    return best / len(labels)


@pytest.mark.parametrize(
    ("n_classes", "n_clusters"), [(3, 3), (4, 4), (3, 5), (5, 3), (2, 4), (4, 2)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acc_matches_brute_force(n_classes: int, n_clusters: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=40)
    # correlated prediction so that the optimum is not trivial
    pred = np.where(rng.random(40) < 0.6, labels % n_clusters, rng.integers(0, n_clusters, size=40))
    assert cluster_acc(labels, pred) == pytest.approx(brute_force_acc(labels, pred))


def test_acc_with_empty_and_sparse_cluster_ids() -> None:
    # cluster ids 0..9 requested, only 3 used, with large arbitrary ids
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([7, 7, 3, 100, 100, 42, 42, 42, 3])
    assert cluster_acc(labels, pred) == pytest.approx(brute_force_acc(labels, pred))
    assert cluster_acc(labels, pred) == pytest.approx(7 / 9)


def test_permuted_labels_give_perfect_scores() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=200)
    perm = np.array([4, 0, 5, 2, 1, 3]) * 11  # relabel with arbitrary non-negative ids
    pred = perm[labels]
    scores = evaluate_clustering(labels, pred)
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0, "ami": 1.0})


def test_more_clusters_than_classes_penalised() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # each class split in two
    assert cluster_acc(labels, pred) == pytest.approx(0.5)


def test_nmi_ari_match_sklearn_and_accept_tensors() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=300)
    pred = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 7, size=300))
    scores = evaluate_clustering(torch.from_numpy(labels), torch.from_numpy(pred))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, pred))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, pred))
    assert scores["acc"] == pytest.approx(cluster_acc(labels, pred))
    assert 0.0 < scores["ari"] < 1.0


def test_unlabelled_samples_ignored() -> None:
    labels = np.array([0, 0, 1, 1, -1, -1, -1])
    pred = np.array([1, 1, 0, 0, 1, 0, 1])
    assert evaluate_clustering(labels, pred) == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0, "ami": 1.0})
    assert evaluate_clustering(np.full(4, -1), np.arange(4)) == {}


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        cluster_acc([0, 1], [0, 1, 1])


def test_cluster_sizes_count_empty_ids() -> None:
    pred = np.array([0, 0, 0, 0, 2, 2, 3, 3])
    np.testing.assert_array_equal(cluster_sizes(pred, 5), [4, 0, 2, 2, 0])


def test_cluster_ids_out_of_range_raise() -> None:
    with pytest.raises(ValueError):
        cluster_sizes([0, 5], 3)


def test_items_without_a_cluster_are_left_out() -> None:
    """An unreadable image gets cluster -1: it counts neither for nor against the clustering."""
    labels = np.array([0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, -1])
    assert evaluate_clustering(labels, pred)["acc"] == 1.0
