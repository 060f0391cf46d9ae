"""CC's components (imported only when a recipe builds them)."""

from __future__ import annotations

from typing import Any

import torch

from clustkit.engine.context import RunContext
from clustkit.heads import MLPHead
from clustkit.losses import cluster_contrast, nt_xent
from clustkit.pairloss import PairLoss


def build_instance_head(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    return MLPHead(ctx.backbone_dim, [cfg.hidden], cfg.out_dim, output="l2")


def build_cluster_head(cfg: Any, ctx: RunContext) -> torch.nn.Module:
    return MLPHead(ctx.backbone_dim, [cfg.hidden], ctx.n_clusters, output="softmax")


class InstanceContrast(PairLoss):
    """NT-Xent on the instance head, τ_I = 0.5 (CC)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.cfg.temperature)


class ClusterContrast(PairLoss):
    """Cluster contrast on the soft-assignment columns, τ_C = 1.0, plus log K − H(p) per view (CC)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cluster_contrast(a, b, self.cfg.temperature, self.cfg.entropy_weight)
