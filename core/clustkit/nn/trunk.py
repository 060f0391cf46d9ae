"""The trunk a run on cached features trains in place of a backbone: frozen model, then an MLP.

A run with ``[features]`` trains the heads on the frozen backbone's cached features; its network's
``backbone`` is a :class:`FeatureTrunk`, which maps either images (through the frozen model: what
``clustkit predict`` gives new images) or cached feature rows (2-D: what training and evaluation
read from the cache) to the features the heads read. The same heads and losses run on both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureTrunk(nn.Module):
    """``trunk(normalise(frozen(x)))``, or ``trunk(normalise(x))`` for rows of cached features."""

    def __init__(self, frozen: nn.Module, hidden: list[int], out_dim: int | None, normalize: bool):
        super().__init__()
        self.frozen = frozen.requires_grad_(False)
        self.feature_dim = int(frozen.out_dim)  # type: ignore[arg-type]
        self.normalize = normalize
        layers: list[nn.Module] = []
        dim = self.feature_dim
        for width in [*hidden, *([out_dim] if out_dim else [])]:
            layers += [nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            dim = width
        self.mlp = nn.Sequential(*layers)
        self.out_dim = dim

    def train(self, mode: bool = True) -> FeatureTrunk:
        super().train(mode)
        self.frozen.train(False)  # fixed BatchNorm statistics: the cached features stay the model's
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen model's features of images; rows of features pass through."""
        if x.dim() == 2:
            return x
        with torch.no_grad():
            return self.frozen(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        if self.normalize:
            f = F.normalize(f, dim=1)
        return self.mlp(f)
