"""Row-wise helpers for feature matrices (N items × D features), shared by k-means, the
manifold clustering, the report and a trained run's placement of new images."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_means", "unit_rows"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero): cosine geometry."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_means(x: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """(n_clusters × D) float32 mean row of each cluster 0..n_clusters-1; inf for an empty
    cluster, so that no item is ever nearest to it. Items labelled -1 belong to none."""
    cent = np.full((n_clusters, x.shape[1]), np.inf, dtype=np.float32)
    for c in range(n_clusters):
        members = x[clusters == c]
        if len(members):
            cent[c] = members.mean(0)
    return cent
