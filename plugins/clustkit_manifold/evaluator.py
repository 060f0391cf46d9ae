"""The ``umap`` evaluator: UMAP embedding of the run's features, then a GMM or k-means there."""

from __future__ import annotations

from typing import Any

import numpy as np

from clustkit import BuildContext, Prediction, RunContext
from clustkit.cluster.manifold import embed, neighbor_graph
from clustkit.cluster.rows import cluster_means, unit_rows
from clustkit.cluster.selection import agreement_scores
from clustkit.cluster.votes import extend_by_neighbors


def cluster_embedding(z: np.ndarray, k: int, method: str, n_init: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, float]:
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


def consensus_run(labelings: list[np.ndarray]) -> tuple[int, float | None]:
    """(index, its mean NMI with the others) of the labelling that agrees best with the others.

    Why: UMAP's layout is a stochastic optimisation, and on a few feature sets one layout in four
    merged two classes and split a third (USPS: 0.845 against 0.982 for the other seeds). Those
    failures differ from run to run, while the good layouts agree with each other, so the medoid
    of a few runs is a good one. Ties go to the earliest run."""
    if len(labelings) == 1:
        return 0, None
    scores = agreement_scores({str(i): lab for i, lab in enumerate(labelings)})
    best = max(range(len(labelings)), key=lambda i: (scores[str(i)], -i))
    return best, scores[str(best)]


class UMAPEvaluator:
    """Cluster the UMAP embedding of a feature space (N2D), of all items or of ``fit_on`` of them
    (the others then take the majority cluster of their nearest embedded items); with ``n_runs``
    > 1, embed and cluster that many times (seeds seed, seed + 1, ...) and keep the consensus run.
    With ``fit_on``, each run embeds its own random sample (drawn with its own seed): which items
    are embedded changes the layout as much as UMAP's seed does (on MNIST one or two 20,000-item
    samples in four merged part of two classes at 15 neighbours), and one shared sample would put that
    failure in every run. New images are placed by the nearest cluster mean in the feature space
    itself (UMAP's own embedding of an unseen image would need the whole fitted graph in the
    checkpoint)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    def one_run(self, x: np.ndarray, rows: np.ndarray | None, k: int, dims: int, layout_seed: int, gmm_seed: int,
                graph: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, confidence, fit score) of every item from one UMAP layout (``layout_seed``) of
        all items (``rows`` None; ``graph``: their neighbour graph, shared by their layouts) or of
        the items ``rows``, whose clusters the others then take by a vote of their neighbours."""
        cfg = self.cfg
        if rows is None:
            return cluster_embedding(embed(x, dims, cfg.n_neighbors, cfg.min_dist, cfg.metric, layout_seed, graph),
                                     k, cfg.cluster, cfg.n_init, gmm_seed)
        fitted, fitted_conf, fit = cluster_embedding(
            embed(x[rows], dims, cfg.n_neighbors, cfg.min_dist, cfg.metric, layout_seed), k, cfg.cluster, cfg.n_init,
            gmm_seed)
        labels, conf = extend_by_neighbors(x, rows, fitted, cfg.extend_k, k, cfg.metric)  # the others: a vote
        conf[rows] = fitted_conf  # the embedded items keep their GMM confidence; the others: their vote share
        return labels, conf, fit

    def evaluate(self, ctx: RunContext) -> Prediction:
        cfg = self.cfg
        head = None if cfg.features == "backbone" else cfg.features
        x = ctx.extract(head, momentum=cfg.momentum).numpy().astype(np.float32)
        k = int(ctx.n_clusters)
        dims = k if cfg.n_components == "n_clusters" else int(cfg.n_components)
        n = len(x)
        if cfg.fit_on is None or cfg.fit_on >= n:  # every layout of all items, from one exact kNN graph
            graph = neighbor_graph(x, cfg.n_neighbors, cfg.metric)
            runs = [self.one_run(x, None, k, dims, ctx.seed + r, ctx.seed, graph) for r in range(cfg.n_runs)]
        else:  # each run its own sample (seed + r), embedded with its own graph
            runs = [self.one_run(x, np.sort(np.random.default_rng(ctx.seed + r).choice(n, cfg.fit_on, replace=False)),
                                 k, dims, ctx.seed + r, ctx.seed + r) for r in range(cfg.n_runs)]
        chosen, agreement = consensus_run([run[0] for run in runs])
        labels, conf, fit = runs[chosen]
        cent = cluster_means(unit_rows(x) if cfg.metric == "cosine" else x, labels, k)
        pred = Prediction(labels, kind="umap", space=cfg.features, momentum=cfg.momentum,
                          rule="cosine_centroid" if cfg.metric == "cosine" else "centroid", scores=conf,
                          centroids=cent, extra={"umap_dims": dims, f"{cfg.cluster}_fit": fit, "umap_runs": cfg.n_runs,
                                                 "umap_chosen_run": chosen, "umap_agreement": agreement})
        return ctx.vote(pred, cfg, at_hand={cfg.features: x}, metric=cfg.metric)  # each item's neighbours, if vote_k
