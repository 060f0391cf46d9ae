"""Clustering metrics (ACC, NMI, ARI) and cluster-health statistics.

Torch is never imported here: tensors are recognised by duck typing so that
``clustkit --help`` (which may import this module) stays light.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

__all__ = ["METRIC_KEYS", "cluster_acc", "cluster_sizes", "evaluate_clustering", "to_numpy"]

#: what :func:`evaluate_clustering` returns, in the order tables and curves show them
METRIC_KEYS = ("acc", "nmi", "ari", "ami")


def to_numpy(a: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array (no torch import)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _as_int_vector(a: Any, name: str) -> np.ndarray:
    v = to_numpy(a).reshape(-1)
    if v.size and not np.issubdtype(v.dtype, np.integer) and not np.all(np.equal(np.mod(v, 1), 0)):
        raise ValueError(f"{name} must contain integers")
    return v.astype(np.int64, copy=False)


def cluster_acc(labels: Any, pred: Any) -> float:
    """Best-map accuracy: Hungarian matching of clusters to classes.

    The confusion matrix is rectangular (clusters × classes), so more clusters
    than classes leaves the surplus clusters unmatched (their samples count as
    errors) and fewer clusters leaves classes unmatched. Ids are remapped with
    ``np.unique`` so arbitrary non-negative ids and empty cluster ids are fine.
    """
    y = _as_int_vector(labels, "labels")
    p = _as_int_vector(pred, "pred")
    if y.shape != p.shape:
        raise ValueError(f"labels and pred differ in length: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("cluster_acc needs at least one sample")
    _, y_idx = np.unique(y, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    confusion = np.zeros((p_idx.max() + 1, y_idx.max() + 1), dtype=np.int64)
    np.add.at(confusion, (p_idx, y_idx), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, cols].sum() / y.size)


def evaluate_clustering(labels: Any, pred: Any) -> dict[str, float]:
    """ACC / NMI (arithmetic) / ARI / AMI on the labelled samples (label >= 0) that have a cluster
    (pred >= 0; an unreadable image has none); {} if none."""
    y = _as_int_vector(labels, "labels")
    p = _as_int_vector(pred, "pred")
    if y.shape != p.shape:
        raise ValueError(f"labels and pred differ in length: {y.shape} vs {p.shape}")
    keep = (y >= 0) & (p >= 0)
    if not keep.any():
        return {}
    y, p = y[keep], p[keep]
    return {
        "acc": cluster_acc(y, p),
        "nmi": float(normalized_mutual_info_score(y, p, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(y, p)),
        "ami": float(adjusted_mutual_info_score(y, p)),
    }


def cluster_sizes(pred: Any, k: int) -> np.ndarray:
    """Number of samples per cluster id 0..k-1 (int64, length k)."""
    p = _as_int_vector(pred, "pred")
    if p.size and (p.min() < 0 or p.max() >= k):
        raise ValueError(f"cluster ids must lie in [0, {k}), got [{p.min()}, {p.max()}]")
    return np.bincount(p, minlength=k).astype(np.int64)
