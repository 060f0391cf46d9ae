"""A third-party clustkit plugin in one loose file, written from the documentation alone.

Load it with ``CLUSTKIT_PLUGINS_DIR=<a folder holding this file>`` (docs/api.md, "A plugin in one
loose file"); the plugin is then called ``second_party``. It provides:

* grouper ``spectral``: scikit-learn's SpectralClustering (nearest-neighbours affinity). It has no
  centres, so it returns each group's mean row as ``centroids`` (docs/api.md, "A grouper's
  features"); every candidate the engine builds through ``[grouping]`` is then ``spectral:<space>``;
* evaluator ``spectral_eval``: the same clustering of one feature space, returned as a
  ``Prediction`` that places new images by the nearest (cosine) mean of its clusters, so that
  ``clustkit predict`` can use it;
* loss ``balance``: KL(mean soft assignment || uniform) of a soft-assignment head, at a temperature;
  its ``on_epoch_end`` logs the epoch's cluster-size entropy (and its own unweighted mean).

The module imports only numpy and pydantic at load (``clustkit plugins`` imports every plugin);
torch and scikit-learn are imported when a component is used.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from clustkit import (
    ComponentConfig,
    EvaluatorConfig,
    HeadOrBackbone,
    HeadRef,
    KMeansResult,
    LossConfig,
    Prediction,
    View,
    hookimpl,
)

# ----------------------------------------------------------------------------------------- configs


class SpectralConfig(ComponentConfig):
    """``[grouping] name = "spectral"``."""

    n_neighbors: int = Field(10, ge=2, description="neighbours of the affinity graph (nearest_neighbors affinity)")
    assign_labels: Literal["kmeans", "discretize", "cluster_qr"] = Field(
        "cluster_qr", description="how the spectral embedding is cut into groups")


class SpectralEvalConfig(EvaluatorConfig):
    """``[evaluation] name = "spectral_eval"`` (plus the neighbour vote keys of EvaluatorConfig)."""

    features: HeadOrBackbone = Field("backbone", description="'backbone' or the name of a head")
    n_neighbors: int = Field(10, ge=2, description="neighbours of the affinity graph")
    spherical: bool = Field(True, description="L2-normalise the features first; new images go to the nearest "
                                              "cosine mean (else the nearest Euclidean mean)")


class BalanceConfig(LossConfig):
    """``[losses.<id>] name = "balance"``: ``weight`` comes from LossConfig."""

    head: HeadRef = Field("cluster", description="a soft-assignment head (rows sum to 1)")
    views: list[View] = Field(["weak1", "weak2"], description="training views whose assignments are balanced")
    temperature: float = Field(1.0, gt=0, description="re-temper the assignments: softmax(log p / temperature)")


# ------------------------------------------------------------------------------------ the grouping


def spectral_labels(x: np.ndarray, n_groups: int, n_neighbors: int, seed: int, n_init: int = 10,
                    assign_labels: str = "cluster_qr") -> np.ndarray:
    import warnings

    from sklearn.cluster import SpectralClustering

    sc = SpectralClustering(n_clusters=n_groups, affinity="nearest_neighbors", n_neighbors=min(n_neighbors, len(x) - 1),
                            assign_labels=assign_labels, random_state=seed, n_init=n_init)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return sc.fit_predict(x).astype(np.int64)


def _rows(features: Any, spherical: bool) -> np.ndarray:
    x = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    x = x.astype(np.float32, copy=False)
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


class SpectralGrouper:
    """A grouper: ``assign_groups`` returns a KMeansResult (labels, and each group's mean as centre)."""

    def __init__(self, cfg: SpectralConfig, ctx: Any):
        self.cfg = cfg
        self.seed = ctx.seed

    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int | None,
                      n_init: int | None, rows: Any, ctx: Any) -> KMeansResult:
        from clustkit.cluster.rows import cluster_means

        x = _rows(features, spherical)
        labels = spectral_labels(x, n_groups, self.cfg.n_neighbors, self.seed if seed is None else seed,
                                 n_init or 10, self.cfg.assign_labels)
        cent = cluster_means(x, labels, n_groups)
        filled = np.isfinite(cent).all(1)
        diff = x - np.where(filled[:, None], cent, 0)[labels]
        return KMeansResult(labels=labels, centroids=cent, inertia=float((diff ** 2).sum()), backend="spectral",
                            n_iter=1, n_empty=int((~filled).sum()))


class SpectralEvaluator:
    """An evaluator: spectral clustering of one feature space, placing new images by its cluster means."""

    def __init__(self, cfg: SpectralEvalConfig, ctx: Any):
        self.cfg = cfg

    def evaluate(self, ctx: Any) -> Prediction:
        from clustkit.cluster.rows import cluster_means

        space = self.cfg.features
        feats = ctx.extract(head=None if space == "backbone" else space)
        x = _rows(feats, self.cfg.spherical)
        k = ctx.n_clusters
        labels = spectral_labels(x, k, self.cfg.n_neighbors, ctx.seed)
        cent = cluster_means(x, labels, k)
        # confidence: DEC's Student-t soft assignment to the means, as clustkit predict reports it
        c = np.where(np.isfinite(cent), cent, 1e6)
        d2 = np.maximum((x ** 2).sum(1, keepdims=True) - 2 * x @ c.T + (c ** 2).sum(1), 0)
        q = 1.0 / (1.0 + d2)
        scores = (q.max(1) / q.sum(1)).astype(np.float32)
        pred = Prediction(labels, kind="spectral_eval", space=space, centroids=cent, scores=scores,
                          rule="cosine_centroid" if self.cfg.spherical else "centroid")
        return ctx.vote(pred, self.cfg)


# -------------------------------------------------------------------------------------- the loss


class BalanceLoss:
    """KL(m || uniform) of the batch-mean soft assignment m of ``head`` on each view, averaged over views.

    The engine names the term after the recipe key and multiplies it by ``weight``; this returns it
    unweighted. ``on_epoch_end`` logs the normalised entropy of the epoch's hard cluster sizes (1 =
    all clusters equal) as ``<id>_size_entropy``, and the epoch mean of what ``compute_loss``
    returned as ``<id>_unweighted`` (so that the weighting can be checked against the logged loss).
    """

    def __init__(self, cfg: BalanceConfig, ctx: Any):
        self.cfg = cfg
        self.id = ctx.key.split(".", 1)[1]  # "losses.balance" -> "balance"
        self.counts = np.zeros(max(ctx.n_clusters, 1), dtype=np.int64)  # all state created here
        self.raw_sum = 0.0
        self.n_steps = 0

    def compute_loss(self, out: Any, ctx: Any) -> Any:
        import torch

        total = 0.0
        for view in self.cfg.views:
            p = out.head(view, self.cfg.head)
            if self.cfg.temperature != 1.0:
                p = torch.softmax(p.clamp_min(1e-8).log() / self.cfg.temperature, dim=1)
            m = p.mean(0)
            total = total + (m * (m.clamp_min(1e-8).log() + math.log(p.shape[1]))).sum()
            with torch.no_grad():
                self.counts += np.bincount(p.argmax(1).cpu().numpy(), minlength=len(self.counts))[:len(self.counts)]
        loss = total / len(self.cfg.views)
        self.raw_sum += float(loss.detach())
        self.n_steps += 1
        return loss

    def on_epoch_start(self, ctx: Any) -> None:
        self.counts[:] = 0
        self.raw_sum, self.n_steps = 0.0, 0

    def on_epoch_end(self, ctx: Any, logs: dict[str, float]) -> None:
        if self.n_steps == 0:
            return
        p = self.counts / max(self.counts.sum(), 1)
        h = -(p[p > 0] * np.log(p[p > 0])).sum() / math.log(len(p)) if len(p) > 1 else 1.0
        logs[f"{self.id}_size_entropy"] = float(h)
        logs[f"{self.id}_unweighted"] = self.raw_sum / self.n_steps


# -------------------------------------------------------------------------------------- registration


@hookimpl
def register_components(registry: Any) -> None:
    registry.add("grouper", "spectral", "second_party:SpectralGrouper", SpectralConfig,
                 doc="spectral clustering (scikit-learn, nearest-neighbours affinity); centres are group means")
    registry.add("evaluator", "spectral_eval", "second_party:SpectralEvaluator", SpectralEvalConfig,
                 doc="spectral clustering of one feature space; new images go to the nearest cluster mean")
    registry.add("loss", "balance", "second_party:BalanceLoss", BalanceConfig,
                 doc="KL(mean soft assignment || uniform) of a cluster head")
