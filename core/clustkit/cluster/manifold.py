"""UMAP embeddings of feature rows: what the ``manifold`` plugin clusters (N2D) and what the
report draws. umap-learn is imported on first use (numba's start-up costs seconds)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from clustkit.cluster.neighbors import knn
from clustkit.cluster.rows import unit_rows
from clustkit.errors import UserError

__all__ = ["embed", "extend_by_neighbors", "neighbor_graph", "neighbor_vote"]


def neighbor_graph(x: np.ndarray, n_neighbors: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each row's ``n_neighbors`` nearest rows, itself first, exact
    (FAISS): the graph :func:`embed` hands to umap-learn. It depends on the rows only, so several
    embeddings of the same rows (other seeds) share one."""
    n_neighbors = min(n_neighbors, len(x) - 1)
    pts = unit_rows(x) if metric == "cosine" else x
    d2, idx = knn(pts, n_neighbors, exclude_self=False)  # each point first, as umap-learn's own search
    dist = d2 / 2.0 if metric == "cosine" else np.sqrt(d2)  # ‖a − b‖² = 2 (1 − cos) for unit rows
    return idx, dist.astype(np.float32)


def embed(x: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, metric: str, seed: int,
          graph: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """UMAP embedding of the rows of ``x`` (float32), seeded: umap-learn then runs its layout on
    one thread, and the same input gives the same embedding. The layout is a stochastic
    optimisation, though: another seed, or features that differ in their last bits, can give a
    different layout, now and then one that merges two classes; the ``manifold`` plugin therefore
    keeps the consensus of a few seeds (docs/plugins/manifold.md).

    The neighbour graph UMAP starts from is exact (``clustkit.cluster.neighbors.knn``, FAISS) and
    handed to umap-learn: on USPS's 9,298 features that takes 34 s in all instead of 105 s with
    umap-learn's own approximate search, most of which is numba compiling it, at the same ACC.
    ``graph``: :func:`neighbor_graph` of the same rows, when the caller has it already."""
    try:
        import umap  # umap-learn; imported here because numba's start-up costs seconds
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise UserError("a UMAP embedding needs umap-learn: pip install umap-learn") from e
    n = len(x)
    idx, dist = graph if graph is not None else neighbor_graph(x, n_neighbors, metric)
    pts = unit_rows(x) if metric == "cosine" else x
    reducer = umap.UMAP(n_components=n_components, n_neighbors=idx.shape[1], min_dist=min_dist, metric=metric,
                        random_state=seed, n_jobs=1, init="spectral" if n > n_components + 1 else "random",
                        precomputed_knn=(idx, dist, None))
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state": the point of the seed
            return reducer.fit_transform(pts).astype(np.float64)
    finally:
        # numba's OpenMP start-up sets the process's OpenMP thread count to every core, torch's
        # included: a run given one thread (bench --threads 1) would train on all of them after
        # its first UMAP evaluation, and two such runs fight over the cores.
        torch.set_num_threads(threads)


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
    round before. Why: a clustering reached through a sample (``extend_by_neighbors``) labels
    the rows outside it from the sample alone; a vote among all rows' own neighbours fixes most
    of the rows that sit inside another cluster's neighbourhood (MNIST, 20,000 of 70,000 rows
    embedded: +0.001 to +0.002 ACC on each of three seeds)."""
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
