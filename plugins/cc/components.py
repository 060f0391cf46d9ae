"""CC's components (imported only when a recipe builds them)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clustkit import hookimpl
from clustkit.augment import normalize_batch, per_image, weak_pipeline
from clustkit.engine.context import RunContext
from clustkit.engine.outputs import StepOutputs
from clustkit.heads import MLPHead
from clustkit.losses import cluster_contrast, nt_xent


def build_instance_head(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    return MLPHead(ctx.backbone_dim, [cfg.hidden], cfg.out_dim, output="l2")


def build_cluster_head(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    return MLPHead(ctx.backbone_dim, [cfg.hidden], ctx.n_clusters, output="softmax")


class _PairLoss:
    """A loss summed over the recipe's view pairs, weighted, named after its recipe key."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg
        self.term = ctx.current_key.split(".")[-1] or cfg.name

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @hookimpl
    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> dict[str, torch.Tensor]:
        total = sum(self.pair_loss(out.head(u, self.cfg.head), out.head(v, self.cfg.head)) for u, v in self.cfg.pairs)
        return {self.term: self.cfg.weight * total}


class InstanceContrast(_PairLoss):
    """NT-Xent on the instance head, τ_I = 0.5 (CC)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.cfg.temperature)


class ClusterContrast(_PairLoss):
    """Cluster contrast on the soft-assignment columns, τ_C = 1.0, plus log K − H(p) per view (CC)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cluster_contrast(a, b, self.cfg.temperature, self.cfg.entropy_weight)


class WeakViews:
    """CC's weak pipeline applied image by image; the evaluation view is the resized image."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.names = list(cfg.names)
        self.size = cfg.size or ctx.image_size[0]
        self.normalize = cfg.normalize
        self.transform = weak_pipeline(self.size, ctx.in_channels, cfg.strength, cfg.blur, tuple(cfg.crop_scale),
                                       cfg.normalize)

    @hookimpl
    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if train:
            return {name: per_image(self.transform, images) for name in self.names}
        x = images
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return {"eval": normalize_batch(x) if self.normalize else x}
