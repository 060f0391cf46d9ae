"""Factories and classes of the built-in components (imported only when a run builds them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clustkit import BuildContext, Prediction, RunContext, hookimpl
from clustkit.cluster.kmeans import kmeans
from clustkit.cluster.sharded import sharded_kmeans
from clustkit.data import load_dataset
from clustkit.nn.backbones import SmallCNN, TimmBackbone, TorchvisionResNet
from clustkit.nn.heads import MLPHead


def build_dataset(cfg: Any, ctx: BuildContext) -> Any:
    # only what the recipe set: each loader accepts its own options and rejects the others
    options = {k: v for k, v in cfg.model_dump(exclude_defaults=True).items()
               if k not in ("name", "root", "split", "image_size", "in_memory")}
    return load_dataset(cfg.name, root=cfg.root, image_size=cfg.image_size, split=cfg.split,
                        in_memory=cfg.in_memory, **options)


def build_small_cnn(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    return SmallCNN(ctx.in_channels, cfg.width, cfg.out_dim)


def build_resnet(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    return TorchvisionResNet(cfg.depth, ctx.in_channels, cfg.stem)


def build_timm(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    return TimmBackbone(cfg.model, ctx.in_channels, cfg.pretrained, **cfg.kwargs)


def build_mlp_head(cfg: Any, ctx: BuildContext) -> torch.nn.Module:
    out_dim = ctx.n_clusters if cfg.out_dim == "n_clusters" else int(cfg.out_dim)
    return MLPHead(ctx.backbone_dim, list(cfg.hidden), out_dim, cfg.output, cfg.batch_norm)


class KMeansGrouper:
    """The default grouping provider: ``clustkit.cluster.kmeans`` (FAISS, GPU index when available, or torch).

    In a multi-process run ``ctx.group`` hands every rank its shard of the rows (this grouper
    declares ``accepts_shards``; ``ctx.grouping_shards`` says so during the call) and the ranks
    run ``sharded_kmeans`` together: nobody gathers the whole feature matrix, and the labels
    come back as this rank's rows. Called with the whole matrix (one process, or rank 0 alone
    when another grouper does not take shards), it runs ``kmeans``.
    """

    accepts_shards = True

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    @hookimpl(trylast=True)
    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, n_init: int | None,
                      ctx: RunContext) -> Any:
        options = dict(spherical=spherical, n_init=n_init or self.cfg.n_init, max_iter=self.cfg.max_iter, seed=seed,
                       backend=self.cfg.backend)
        if ctx.grouping_shards:  # a multi-process run: the ranks cluster their shards together
            return sharded_kmeans(features, n_groups, **options)
        return kmeans(features, n_groups, **options)


class HeadArgmax:
    """Cluster = argmax of a soft-assignment head on the evaluation view (CC's ``forward_cluster``),
    then the neighbour vote when the config asks for one (``vote_k``)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    @hookimpl
    def evaluate(self, ctx: RunContext) -> Prediction:
        p = ctx.extract(self.cfg.head, momentum=self.cfg.momentum)
        conf, labels = p.max(dim=1)
        pred = Prediction(labels.numpy().astype(np.int64), source=f"argmax:{self.cfg.head}", scores=conf.numpy(),
                          space=self.cfg.head, rule="argmax", momentum=self.cfg.momentum)
        return ctx.vote(pred, self.cfg, at_hand={self.cfg.head: p})


class KMeansEvaluator:
    """k-means on extracted features (backbone or a head), through the recipe's grouper, then the
    neighbour vote when the config asks for one (``vote_k``)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    @hookimpl
    def evaluate(self, ctx: RunContext) -> Prediction:
        head = None if self.cfg.features == "backbone" else self.cfg.features
        feats, rows = ctx.extract_shard(head, momentum=self.cfg.momentum)  # this rank's rows; all on one process
        result = ctx.group(feats, ctx.n_clusters, spherical=self.cfg.spherical, rows=rows)
        pred = Prediction(np.asarray(result.labels, dtype=np.int64), source=f"kmeans:{self.cfg.features}",
                          space=self.cfg.features, rule="cosine_centroid" if self.cfg.spherical else "centroid",
                          momentum=self.cfg.momentum, centroids=np.asarray(result.centroids, dtype=np.float32),
                          extra={"kmeans_backend": result.backend, "kmeans_inertia": float(result.inertia)})
        return ctx.vote(pred, self.cfg, at_hand={self.cfg.features: feats} if ctx.world_size == 1 else None)
