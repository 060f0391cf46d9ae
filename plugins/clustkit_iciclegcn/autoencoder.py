"""IcicleGCN's stage-1 auto-encoder head (JC-SLIM) and its reconstruction loss (docs/methods/iciclegcn.md)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from clustkit import BuildContext, RunContext, StepOutputs


class JCSlimAE(nn.Module):
    """Encoder d→hidden…→K with ReLU after every hidden layer and softmax on the K-dim code;
    decoder K→reversed(hidden)…→d with ReLU hidden layers and a linear output.

    ``forward`` returns the softmax code (so the head works with ``head_argmax`` and
    ``ctx.extract``); ``encode_layers`` returns every encoder layer's output (the fusion inputs).
    """

    def __init__(self, in_dim: int, hidden: list[int], n_clusters: int):
        super().__init__()
        dims = [in_dim, *hidden, n_clusters]
        self.dims = dims
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        rdims = dims[::-1]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(rdims))
        self.out_dim = n_clusters

    def encode_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            h = torch.relu(h) if i < len(self.encoder) - 1 else torch.softmax(h, dim=1)
            outs.append(h)
        return outs

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        h = code
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_layers(x)[-1]


def build_autoencoder(cfg: Any, ctx: BuildContext) -> JCSlimAE:
    return JCSlimAE(ctx.backbone_dim, list(cfg.hidden), ctx.n_clusters)


class ReconLoss:
    """re: (1/(V·N)) Σ_views ‖Z − Ẑ‖²_F with Ẑ = decoder(softmax code) (paper Eq. 6, V = 2)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor:
        ae = ctx.model.heads[self.cfg.head]
        total: torch.Tensor | float = 0.0
        n = 0
        for v in self.cfg.views:
            z = out.features(v)
            z_hat = ae.decode(out.head(v, self.cfg.head))
            target = z.detach() if self.cfg.detach_target else z
            total = total + (z_hat - target).pow(2).sum()
            n += z.shape[0]
        return total / n
