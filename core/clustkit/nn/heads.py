"""Projection heads: an MLP with an optional output normalisation, and the factories of the
instance and cluster heads that the method plugins register."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from clustkit.engine.context import BuildContext


class MLPHead(nn.Module):
    """Linear layers with ReLU between them (optionally BatchNorm), then ``output``:
    ``"none"``, ``"l2"`` (unit vectors, instance heads) or ``"softmax"`` (cluster heads)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int,
                 output: Literal["none", "l2", "softmax"] = "none", batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for h in hidden:
            layers.append(nn.Linear(dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            dim = h
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.output = output
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.output == "l2":
            return F.normalize(y, dim=1)
        if self.output == "softmax":
            return torch.softmax(y, dim=1)
        return y


def build_instance_head(cfg: Any, ctx: BuildContext) -> MLPHead:
    """CC's instance projector (also IcicleGCN's ISM): MLP to ``out_dim``, L2-normalised."""
    return MLPHead(ctx.backbone_dim, [cfg.hidden], cfg.out_dim, output="l2")


def build_cluster_head(cfg: Any, ctx: BuildContext) -> MLPHead:
    """CC's cluster projector: MLP to the run's number of clusters, softmax."""
    return MLPHead(ctx.backbone_dim, [cfg.hidden], ctx.n_clusters, output="softmax")

