"""UMAP embeddings of feature rows: what the ``manifold`` plugin clusters (N2D) and what the
report draws. umap-learn is imported on first use (numba's start-up costs seconds)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from clustkit.cluster.neighbors import knn
from clustkit.cluster.rows import unit_rows
from clustkit.errors import UserError

__all__ = ["embed", "neighbor_graph"]


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
