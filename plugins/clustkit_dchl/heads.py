"""DCHL's two cluster-branch heads, which share one trunk (the authors' cross projector)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clustkit import BuildContext


def shared_trunk(cfg: Any, ctx: BuildContext) -> nn.Module:
    """The cluster trunk Linear(in -> hidden) -> ReLU, one module per trunk name and run, so the
    coarse and fine heads naming the same ``trunk`` share its parameters (DCHL's cross projector)."""
    trunk = ctx.shared(f"dchl.trunk.{cfg.trunk}",
                       lambda: nn.Sequential(nn.Linear(ctx.backbone_dim, cfg.hidden), nn.ReLU(inplace=True)))
    if trunk[0].out_features != cfg.hidden:
        raise ctx.error("hidden", f"is {cfg.hidden}, but another head shares trunk {cfg.trunk!r} with hidden = "
                        f"{trunk[0].out_features}; shared trunks need one size.")
    return trunk


class BranchHead(nn.Module):
    """Shared trunk, then Linear to ``out_dim``, then softmax (coarse) or L2 normalisation (fine)."""

    def __init__(self, trunk: nn.Module, hidden: int, out_dim: int, output: str):
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(hidden, out_dim)
        self.output = output
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.trunk(x))
        return torch.softmax(y, dim=1) if self.output == "softmax" else F.normalize(y, dim=1)


def build_coarse_head(cfg: Any, ctx: BuildContext) -> nn.Module:
    return BranchHead(shared_trunk(cfg, ctx), cfg.hidden, ctx.n_clusters, "softmax")


def build_fine_head(cfg: Any, ctx: BuildContext) -> nn.Module:
    return BranchHead(shared_trunk(cfg, ctx), cfg.hidden, cfg.out_dim, "l2")
