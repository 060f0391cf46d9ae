"""Label-free cluster diagnostics: numbers that help choose K and spot a degenerate clustering
without ground truth.

- ``size_entropy``: entropy of the cluster-size distribution over all ``n_clusters`` ids divided by
  ``log(n_clusters)``. 1.0 is perfectly balanced, 0.0 is everything in one cluster (and always 0.0
  when ``n_clusters`` is 1); a value that falls as K grows means the extra clusters go unused.
- ``n_empty``: cluster ids with no member. Empty clusters mean K is larger than the model can fill
  (or the training collapsed).
- ``min_size_ratio`` / ``max_size_ratio``: smallest / largest cluster size divided by the size of a
  perfectly balanced cluster (N / n_clusters). Near 0 flags a starved cluster, well above 1 a
  cluster that swallows several classes.
- ``silhouette``: cosine silhouette of the features on a seeded random sample (only when features
  are given and the sample holds at least two clusters). It drops when K splits coherent groups.

Only numpy and scikit-learn are used, so importing this module stays light (no torch).
"""

from __future__ import annotations

import numpy as np

from clustkit.cluster.metrics import cluster_sizes

__all__ = ["DIAGNOSTIC_KEYS", "GIANT", "SAMPLE", "TINY", "cluster_diagnostics", "size_profile", "subsample"]

#: a cluster below this share of a balanced cluster (N / n_clusters) is flagged tiny, above this one giant
TINY, GIANT = 0.1, 3.0

#: what :func:`cluster_diagnostics` returns (``silhouette`` only when it is given features)
DIAGNOSTIC_KEYS = ("size_entropy", "n_empty", "min_size_ratio", "max_size_ratio", "silhouette")

#: items the silhouette (and the report's embedding) read at most: a seeded sample
SAMPLE = 2000


def subsample(n: int, limit: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` rows, drawn with a seeded generator (all rows
    when there are no more than ``limit``)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def size_profile(clusters: np.ndarray, n_clusters: int, labels: np.ndarray | None = None) -> dict[str, list[int]]:
    """The cluster sizes, largest first, beside the class sizes where labels exist (``classes``), and
    the cluster ids flagged without labels: ``empty``, ``tiny`` (under :data:`TINY` of a balanced
    cluster) and ``giant`` (over :data:`GIANT` times one). On long-tailed data the true classes
    are uneven too: the flags say where to look, the class sizes whether it is the data."""
    c = np.asarray(clusters).reshape(-1).astype(np.int64, copy=False)
    sizes = cluster_sizes(c[c >= 0], int(n_clusters))
    balanced = sizes.sum() / max(1, int(n_clusters))
    out = {"clusters": sorted(sizes.tolist(), reverse=True),
           "empty": np.flatnonzero(sizes == 0).tolist(),
           "tiny": np.flatnonzero((sizes > 0) & (sizes < TINY * balanced)).tolist(),
           "giant": np.flatnonzero(sizes > GIANT * balanced).tolist()}
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        y = y[(y >= 0) & (c >= 0)] if y.size == c.size else y[y >= 0]
        if y.size:
            counts = np.bincount(y)
            out["classes"] = sorted(counts[counts > 0].tolist(), reverse=True)
    return out


def cluster_diagnostics(clusters: np.ndarray, n_clusters: int, features: np.ndarray | None = None, *,
                        feature_index: np.ndarray | None = None, sample: int = SAMPLE,
                        seed: int = 0) -> dict[str, float | int]:
    """Size balance, empty clusters and (with ``features``) a sampled cosine silhouette.

    ``clusters`` holds one cluster id in ``range(n_clusters)`` per item, or -1 for an item without
    one (an unreadable image), which every diagnostic leaves out. ``features`` (if given) holds
    one row per item, in the same order, or one row per item of ``feature_index`` (e.g. a run's
    sample of its items). Values are plain, rounded python numbers so the dict can go straight
    into JSON.
    """
    c = np.asarray(clusters).reshape(-1).astype(np.int64, copy=False)
    k = int(n_clusters)
    if k < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    if c.size and c.min() < -1:
        raise ValueError(f"cluster ids must lie in [0, {k}) or be -1 (no cluster), got {c.min()}")
    sizes = cluster_sizes(c[c >= 0], k).astype(np.float64)
    n = float(sizes.sum())
    if n > 0:
        q = sizes[sizes > 0] / n
        entropy = float(-(q * np.log(q)).sum() / np.log(k)) if k > 1 else 0.0  # K=1: one cluster
        balanced = n / k
        min_ratio, max_ratio = float(sizes.min() / balanced), float(sizes.max() / balanced)
    else:
        entropy = min_ratio = max_ratio = 0.0
    out: dict[str, float | int] = {
        "size_entropy": round(min(1.0, max(0.0, entropy)), 6),
        "n_empty": int((sizes == 0).sum()),
        "min_size_ratio": round(min_ratio, 6),
        "max_size_ratio": round(max_ratio, 6),
    }

    if features is not None and c.size:
        x = np.asarray(features)
        x = x.reshape(len(x), -1)
        if feature_index is None:
            if len(x) != c.size:
                raise ValueError(f"features has {len(x)} rows but clusters has {c.size} items")
            rows = c
        else:
            fi = np.asarray(feature_index, dtype=np.int64).reshape(-1)
            if len(fi) != len(x):
                raise ValueError(f"feature_index has {len(fi)} entries for {len(x)} feature rows")
            rows = c[fi]
        assigned = rows >= 0
        rows, x = rows[assigned], x[assigned]
        idx = subsample(rows.size, sample, seed)
        cs = rows[idx]
        n_distinct = len(np.unique(cs))
        if 2 <= n_distinct <= len(idx) - 1:  # sklearn's silhouette needs 2 <= labels <= n - 1
            from sklearn.metrics import silhouette_score

            out["silhouette"] = round(float(silhouette_score(x[idx], cs, metric="cosine")), 6)
    return out
