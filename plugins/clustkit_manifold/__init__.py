"""Manifold clustering of a trained network's features: UMAP, then a Gaussian mixture
(docs/plugins/manifold.md).

The idea is N2D's (McConville et al., ICPR 2020, "N2D: (Not Too) Deep Clustering via Clustering
the Local Manifold of an Autoencoded Embedding"): a network's features hold the clusters, but
not as round blobs that k-means can cut. UMAP keeps each sample's neighbourhood and flattens the
manifold into a few dimensions where the clusters become compact, and a GMM with full
covariances finds them there. Here the features are a contrastive network's (the backbone by
default), so any method's training can end with it: ``[evaluation] name = "umap"``.

Only pydantic here: listing plugins never imports torch or umap.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clustkit import EvaluatorConfig, HeadOrBackbone, Registry, hookimpl


class UMAPEvalConfig(EvaluatorConfig):
    """``vote_k`` (from :class:`EvaluatorConfig`) mends what ``fit_on``'s extension from a sample got wrong."""

    features: HeadOrBackbone = Field("backbone", description="'backbone' or the name of a head")
    momentum: bool = Field(False, description="use the momentum network's features")
    n_components: int | Literal["n_clusters"] = Field(
        "n_clusters", description="dimensions of the UMAP embedding; N2D uses the number of clusters")
    n_neighbors: int = Field(15, ge=2, description="UMAP's neighbourhood size: larger keeps more global structure")
    min_dist: float = Field(0.0, ge=0, description="0 packs each cluster tightly (for clustering, not for plots)")
    metric: Literal["cosine", "euclidean"] = Field(
        "cosine", description="distance between features; contrastive features are compared by angle")
    cluster: Literal["gmm", "kmeans"] = Field("gmm", description="how the embedding is clustered (N2D: gmm)")
    n_init: int = Field(5, ge=1, description="restarts of the GMM / k-means; the best likelihood / inertia is kept")
    n_runs: int = Field(3, ge=1, description="UMAP embeddings (seeds seed, seed + 1, ...), each clustered; the output "
                                             "is the one that agrees best (mean NMI) with the others: one unlucky "
                                             "layout that merges two classes is outvoted")
    fit_on: int | None = Field(
        None, ge=100, description="embed and cluster this many random items; every other item takes the majority "
                                  "cluster of its extend_k nearest of them (None: all items; UMAP's time grows "
                                  "with N: about 4 minutes for 70,000 on one CPU thread)")
    extend_k: int = Field(10, ge=1, description="neighbours that vote for an item outside fit_on")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("evaluator", "umap", "clustkit_manifold.evaluator:UMAPEvaluator", UMAPEvalConfig,
                 doc="UMAP embedding of a feature space, then a GMM (N2D): clusters curved manifolds k-means cuts")
