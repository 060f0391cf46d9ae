"""Factories and classes of the built-in components (imported only when a run builds them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clustkit import hookimpl
from clustkit.augment import TensorAffine
from clustkit.engine.context import Prediction, RunContext


def build_dataset(cfg: Any, ctx: RunContext) -> Any:
    from clustkit.data import load_dataset

    # only what the recipe set: each loader accepts its own options and rejects the others
    options = {k: v for k, v in cfg.model_dump(exclude_defaults=True).items()
               if k not in ("name", "root", "split", "image_size")}
    return load_dataset(cfg.name, root=cfg.root, image_size=cfg.image_size, split=cfg.split, **options)


def build_small_cnn(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    from clustkit.backbones import SmallCNN

    return SmallCNN(ctx.in_channels, cfg.width, cfg.out_dim)


def build_resnet(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    from clustkit.backbones import TorchvisionResNet

    return TorchvisionResNet(cfg.depth, ctx.in_channels, cfg.stem)


def build_timm(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    from clustkit.backbones import TimmBackbone

    return TimmBackbone(cfg.model, ctx.in_channels, cfg.pretrained, **cfg.kwargs)


def head_out_dim(value: int | str, ctx: RunContext) -> int:
    """``"n_clusters"`` in a head config means the run's number of clusters."""
    return ctx.n_clusters if value == "n_clusters" else int(value)


def build_mlp_head(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    from clustkit.heads import MLPHead

    return MLPHead(ctx.backbone_dim, list(cfg.hidden), head_out_dim(cfg.out_dim, ctx), cfg.output, cfg.batch_norm)


class TensorAffineViews:
    """Views made by one batched affine/erasing/noise call each; the evaluation view is the image."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.names = list(cfg.names)
        self.aug = TensorAffine(**cfg.model_dump(exclude={"name", "names"}))

    @hookimpl
    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if not train:
            return {"eval": images}
        return {name: self.aug(images) for name in self.names}


class KMeansGrouper:
    """The default grouping provider: clustkit.kmeans (FAISS, GPU index when available, or torch)."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg

    @hookimpl(trylast=True)
    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, ctx: RunContext) -> Any:
        from clustkit.kmeans import kmeans

        return kmeans(features, n_groups, spherical=spherical, n_init=self.cfg.n_init, max_iter=self.cfg.max_iter,
                      seed=seed, backend=self.cfg.backend)


class HeadArgmax:
    """Cluster = argmax of a soft-assignment head on the evaluation view (CC's ``forward_cluster``)."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg

    @hookimpl
    def evaluate(self, ctx: RunContext) -> Prediction:
        p = ctx.extract(self.cfg.head, momentum=self.cfg.momentum)
        conf, labels = p.max(dim=1)
        return Prediction(labels.numpy().astype(np.int64), source=f"argmax:{self.cfg.head}", scores=conf.numpy())


class KMeansEvaluator:
    """k-means on extracted features (backbone or a head), through the recipe's grouper."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg

    @hookimpl
    def evaluate(self, ctx: RunContext) -> Prediction:
        head = None if self.cfg.features == "backbone" else self.cfg.features
        feats = ctx.extract(head, momentum=self.cfg.momentum)
        result = ctx.group(feats, ctx.n_clusters, spherical=self.cfg.spherical)
        return Prediction(np.asarray(result.labels, dtype=np.int64), source=f"kmeans:{self.cfg.features}",
                          extra={"kmeans_backend": result.backend, "kmeans_inertia": float(result.inertia)})
