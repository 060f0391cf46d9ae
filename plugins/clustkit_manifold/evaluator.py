"""The ``umap`` evaluator: UMAP embedding of the run's features, then a GMM or k-means there."""

from __future__ import annotations

from typing import Any

import numpy as np

from clustkit import BuildContext, Prediction, RunContext, hookimpl
from clustkit.cluster.manifold import embed, extend_by_neighbors, unit_rows


def cluster_embedding(z: np.ndarray, k: int, method: str, n_init: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, confidence, fit score) of a GMM with full covariances (the largest posterior;
    the per-sample log-likelihood bound) or of k-means (1.0; minus the inertia)."""
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(k, covariance_type="full", n_init=n_init, random_state=seed, reg_covar=1e-5).fit(z)
        post = gmm.predict_proba(z)
        return post.argmax(1).astype(np.int64), post.max(1), float(gmm.lower_bound_)
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=n_init, random_state=seed).fit(z)
    return km.labels_.astype(np.int64), np.ones(len(z)), -float(km.inertia_)


class UMAPEvaluator:
    """Cluster the UMAP embedding of a feature space (N2D), of all items or of ``fit_on`` of them
    (the others then take the majority cluster of their nearest embedded items). New images are placed by the nearest
    cluster mean in the feature space itself (UMAP's own embedding of an unseen image would need
    the whole fitted graph in the checkpoint)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    @hookimpl
    def evaluate(self, ctx: RunContext) -> Prediction:
        cfg = self.cfg
        head = None if cfg.features == "backbone" else cfg.features
        x = ctx.extract(head, momentum=cfg.momentum).numpy().astype(np.float32)
        k = int(ctx.n_clusters)
        dims = k if cfg.n_components == "n_clusters" else int(cfg.n_components)
        n = len(x)
        rows = np.arange(n) if cfg.fit_on is None or cfg.fit_on >= n else np.sort(
            np.random.default_rng(ctx.seed).choice(n, cfg.fit_on, replace=False))
        z = embed(x[rows], dims, cfg.n_neighbors, cfg.min_dist, cfg.metric, ctx.seed)
        fitted, fitted_conf, fit = cluster_embedding(z, k, cfg.cluster, cfg.n_init, ctx.seed)
        labels, conf = fitted, fitted_conf
        if len(rows) < n:  # the others: the majority cluster of their nearest fitted items
            labels, conf = extend_by_neighbors(x, rows, fitted, cfg.extend_k, k, cfg.metric)
            conf[rows] = fitted_conf  # the others: the share of their neighbours that voted so
        space_x = unit_rows(x) if cfg.metric == "cosine" else x
        cent = np.full((k, x.shape[1]), np.inf, dtype=np.float32)
        for c in np.unique(labels):
            cent[c] = space_x[labels == c].mean(0)
        return Prediction(labels, source=f"umap:{cfg.features}", scores=conf, space=cfg.features,
                          rule="cosine_centroid" if cfg.metric == "cosine" else "centroid", momentum=cfg.momentum,
                          centroids=cent, extra={"umap_dims": dims, f"{cfg.cluster}_fit": fit})
