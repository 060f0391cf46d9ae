"""Projection heads: MLPs with an optional output normalisation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


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
