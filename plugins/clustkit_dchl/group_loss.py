"""DCHL's instance-group discrimination: in-batch k-means on the fine-grained embeddings, and the
self and cross terms that make each query pick its own group in the other view (docs/methods/dchl.md)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clustkit import BuildContext, RunContext, StepOutputs, check_view_pairs

# --------------------------------------------------------------------------- in-batch k-means


def batch_kmeans(g: torch.Tensor, k: int, iters: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """DCHL's in-batch k-means on the rows of ``g`` (N x D): returns (labels N, centroids k x D).

    Centroids start at the first ``min(k, N)`` rows (so two views of one batch start from the
    same images and their group ids correspond); each of ``iters`` Lloyd steps assigns every row
    to the nearest centroid (squared Euclidean, lowest index on ties) and recomputes each
    centroid as the mean of its rows; an empty group gets a zero centroid (count clamped to 1).
    The assignments are not differentiable; the returned centroids are (gradients flow into
    ``g`` through the last mean, as in the reference, which keeps the scatter-add un-detached).
    With k >= N and no two rows equal, every row is its own group (it is at distance exactly 0
    from its own initial centroid and above 0 from every other): labels 0..N-1, the rows as
    centroids and k - N zero centroids. That fixed point is returned without the Lloyd steps,
    the same values and gradients at a fraction of the cost (the reference's setting, K_f >=
    batch, runs this on every step; an exact duplicate row joins the first copy's group, so the
    steps then run as usual).
    """
    n = g.shape[0]
    if k >= n and torch.unique(g.detach(), dim=0).shape[0] == n:
        return torch.arange(n, device=g.device), torch.cat([g, g.new_zeros(k - n, g.shape[1])])
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
    not at all when both term weights are 0. Terms are ``self`` and ``cross`` (``<key>_self``...)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.pairs = [tuple(p) for p in cfg.pairs]
        check_view_pairs(self.pairs, ctx)
        batch = ctx.recipe.run.batch_size
        if cfg.groups >= batch and not cfg.allow_degenerate:
            raise ctx.error("groups", (
                f"is {cfg.groups}, but run.batch_size is {batch}: with K_f >= batch size the in-batch k-means makes "
                f"every sample its own group and L_self/L_cross become instance-level terms (the reference's "
                f"K_f=400 at batch 256). Choose groups < {batch} (e.g. {max(2, batch // 8)}), or set "
                f"{ctx.key}.allow_degenerate = true to reproduce the reference."))

    def groups(self, out: StepOutputs, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, centroids) of one view's fine embeddings, cached in ``out.extras`` for the step."""
        cache_key = ("dchl", "kmeans", self.cfg.fine_head, view, self.cfg.groups, self.cfg.iters)
        if cache_key not in out.extras:
            out.extras[cache_key] = batch_kmeans(out.head(view, self.cfg.fine_head), self.cfg.groups, self.cfg.iters)
        return out.extras[cache_key]

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
            terms[name] = w * total
        return terms
