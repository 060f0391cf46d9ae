"""DCHL's components (imported only when a recipe builds them)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clustkit import hookimpl
from clustkit.engine.context import RunContext
from clustkit.engine.outputs import StepOutputs
from clustkit.errors import RecipeError
from clustkit.losses import cluster_contrast, nt_xent
from clustkit.pairloss import PairLoss, check_view_pairs

# --------------------------------------------------------------------------- heads


def _shared_trunk(cfg: Any, ctx: RunContext) -> nn.Module:
    """The cluster trunk Linear(in -> hidden) -> ReLU, one module per trunk name and run, so the
    coarse and fine heads naming the same ``trunk`` share its parameters (DCHL's cross projector)."""
    trunks: dict[str, nn.Module] = ctx.__dict__.setdefault("_dchl_trunks", {})
    trunk = trunks.get(cfg.trunk)
    if trunk is None:
        trunk = trunks[cfg.trunk] = nn.Sequential(nn.Linear(ctx.backbone_dim, cfg.hidden), nn.ReLU(inplace=True))
    elif trunk[0].out_features != cfg.hidden:
        raise RecipeError(ctx.recipe.path, f"{ctx.current_key}.hidden", f"is {cfg.hidden}, but another head shares "
                          f"trunk {cfg.trunk!r} with hidden = {trunk[0].out_features}; shared trunks need one size.")
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


def build_coarse_head(cfg: Any, ctx: RunContext) -> nn.Module:
    return BranchHead(_shared_trunk(cfg, ctx), cfg.hidden, ctx.n_clusters, "softmax")


def build_fine_head(cfg: Any, ctx: RunContext) -> nn.Module:
    return BranchHead(_shared_trunk(cfg, ctx), cfg.hidden, cfg.out_dim, "l2")


# --------------------------------------------------------------------------- in-batch k-means


def batch_kmeans(g: torch.Tensor, k: int, iters: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """DCHL's in-batch k-means on the rows of ``g`` (N x D): returns (labels N, centroids k x D).

    Centroids start at the first ``min(k, N)`` rows (so two views of one batch start from the
    same images and their group ids correspond); each of ``iters`` Lloyd steps assigns every row
    to the nearest centroid (squared Euclidean, lowest index on ties) and recomputes each
    centroid as the mean of its rows; an empty group gets a zero centroid (count clamped to 1).
    The assignments are not differentiable; the returned centroids are (gradients flow into
    ``g`` through the last mean, as in the reference, which keeps the scatter-add un-detached).
    With k >= N every row is its own group: labels 0..N-1 and k - N zero centroids.
    """
    n = g.shape[0]
    centroids = g[: min(k, n)]
    labels = torch.zeros(n, dtype=torch.long, device=g.device)
    for _ in range(iters):
        with torch.no_grad():
            dist = (g.detach()[:, None, :] - centroids.detach()[None, :, :]).pow(2).sum(-1)  # exact, no expansion
            labels = dist.argmin(dim=1)
        sums = torch.zeros(k, g.shape[1], dtype=g.dtype, device=g.device).index_add(0, labels, g)
        counts = torch.bincount(labels, minlength=k).clamp_min(1).to(g.dtype)
        centroids = sums / counts[:, None]
    return labels, centroids


# --------------------------------------------------------------------------- losses


class DCHLInstance(PairLoss):
    """L_ins: NT-Xent on the instance branch (tau_I = 0.5), summed over pairs."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.cfg.temperature)


class DCHLCluster(PairLoss):
    """L_clu: CC's cluster contrast on the coarse branch (tau_C = 1.0) + log K - H(p) per view."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cluster_contrast(a, b, self.cfg.temperature, self.cfg.entropy_weight)


def group_discrimination(q_a: torch.Tensor, q_b: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
                         cent_a: torch.Tensor, cent_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Instance-group discrimination between two views (CLD-style, DCHL):
    1/2 [CE(q_b C_a^T / tau, l_b) + CE(q_a C_b^T / tau, l_a)]: a query of one view must pick its
    own group among the *other* view's centroids (not re-normalised). Query q = fine embedding
    for L_self, instance embedding for L_cross."""
    return 0.5 * (F.cross_entropy(q_b @ cent_a.t() / temperature, labels_b)
                  + F.cross_entropy(q_a @ cent_b.t() / temperature, labels_a))


class DCHLGroup:
    """L_self + L_cross over the configured view pairs; k-means runs once per view and step, and
    not at all when both term weights are 0. Terms are named ``<key>_self`` and ``<key>_cross``."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg
        key = ctx.current_key
        self.term = key.split(".")[-1] or cfg.name
        self.pairs = [tuple(p) for p in cfg.pairs]
        check_view_pairs(self.pairs, ctx, key)
        if cfg.fine_head not in ctx.recipe.heads:
            raise RecipeError(ctx.recipe.path, f"{key}.fine_head", f"names head {cfg.fine_head!r}, which the recipe "
                              f"does not define.", sorted(ctx.recipe.heads))
        batch = ctx.recipe.run.batch_size
        if cfg.groups >= batch and not cfg.allow_degenerate:
            raise RecipeError(ctx.recipe.path, f"{key}.groups", (
                f"is {cfg.groups}, but run.batch_size is {batch}: with K_f >= batch size the in-batch k-means makes "
                f"every sample its own group and L_self/L_cross become instance-level terms (the reference's "
                f"K_f=400 at batch 256). Choose groups < {batch} (e.g. {max(2, batch // 8)}), or set "
                f"{key}.allow_degenerate = true to reproduce the reference."))

    def groups(self, out: StepOutputs, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, centroids) of one view's fine embeddings, cached in ``out.extras`` for the step."""
        cache_key = ("dchl_kmeans", self.cfg.fine_head, view, self.cfg.groups, self.cfg.iters)
        if cache_key not in out.extras:
            out.extras[cache_key] = batch_kmeans(out.head(view, self.cfg.fine_head), self.cfg.groups, self.cfg.iters)
        return out.extras[cache_key]

    @hookimpl
    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> dict[str, torch.Tensor]:
        c = self.cfg
        terms: dict[str, torch.Tensor] = {}
        for name, w, head in (("self", c.self_weight, c.fine_head), ("cross", c.cross_weight, c.instance_head)):
            if w == 0:
                continue  # a removed term costs nothing
            total = 0
            for u, v in self.pairs:
                (lu, cu), (lv, cv) = self.groups(out, u), self.groups(out, v)
                total = total + group_discrimination(out.head(u, head), out.head(v, head), lu, lv, cu, cv,
                                                     c.temperature)
            terms[f"{self.term}_{name}"] = c.weight * w * total
        return terms
