"""Labels from the neighbours' majority: how a clustering of a sample reaches every item, and
the neighbour vote any evaluation can end with (``vote_k``; docs/selection.md).

Why a vote: a clustering read from one feature space (a head's argmax, k-means, a UMAP
layout) cuts some items away from the cluster their nearest neighbours are in. Letting each
item take its neighbours' majority moves those border items back; it reads no labels.
"""

from __future__ import annotations

import numpy as np

from clustkit.cluster.neighbors import knn
from clustkit.cluster.rows import unit_rows

__all__ = ["extend_by_neighbors", "majority", "neighbor_vote"]


def extend_by_neighbors(x: np.ndarray, fitted: np.ndarray, labels: np.ndarray, k: int, n_clusters: int,
                        metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """(labels, share of the votes) for every row of ``x`` from the labels of the rows ``fitted``:
    each other row takes the majority cluster of its ``k`` nearest fitted rows (ties: the nearest).
    Fitted rows keep their own label (share 1). How a clustering of a sample reaches a dataset
    too large to embed whole."""
    pts = unit_rows(x) if metric == "cosine" else x
    out = np.full(len(x), -1, dtype=np.int64)
    out[fitted] = labels
    share = np.ones(len(x))
    rest = np.setdiff1d(np.arange(len(x)), fitted)
    if len(rest):
        _, near = knn(pts, min(k, len(fitted)), exclude_self=False, rows=rest, among=fitted)
        out[rest], share[rest] = majority(out[near], n_clusters)
    return out, share


def neighbor_vote(x: np.ndarray, labels: np.ndarray, k: int, rounds: int, n_clusters: int,
                  metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """(labels, share of the votes): ``rounds`` times, every row takes the majority cluster of its
    ``k`` nearest other rows of ``x`` (ties: the nearest tied vote), from the labels of the
    round before. Measured gains: a clustering reached through a sample (``extend_by_neighbors``;
    MNIST, 20,000 of 70,000 rows embedded) +0.001 to +0.002 ACC a seed; k-means on DigPro's
    projector and the mixed recipe's cluster head on digits +0.005 to +0.016
    (benchmarks/results/history/2026-12-01-fourth-pass.md, 2026-12-01-sixth-pass.md)."""
    pts = unit_rows(x) if metric == "cosine" else x
    _, near = knn(pts, min(k, len(x) - 1), exclude_self=True)
    out, share = np.asarray(labels, dtype=np.int64).copy(), np.ones(len(x))
    for _ in range(rounds):
        out, share = majority(out[near], n_clusters)
    return out, share


def majority(votes: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, share of the votes) of each row of ``votes`` (Q x k cluster ids, nearest
    neighbour first): the most frequent id, and among tied ids the one whose voter is nearest."""
    rows = np.arange(len(votes))
    counts = np.zeros((len(votes), n_clusters), dtype=np.int64)
    np.add.at(counts, (np.repeat(rows, votes.shape[1]), votes.ravel()), 1)
    best = counts.max(1, keepdims=True)
    tied = counts[rows[:, None], votes] == best  # the first tied-best vote is the nearest one
    return votes[rows, tied.argmax(1)], best[:, 0] / votes.shape[1]
