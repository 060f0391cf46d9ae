"""The two contrasts of the CC family, as pure functions of tensors (docs/methods/cc.md).

CC, SACC, DCHL and IcicleGCN all use them; ``clustkit.losses.pair`` wraps each in the one loss
component that all four register. Sizes are always read from the inputs (CC fixed the batch
size at construction, which forces dropping the last batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Instance-level contrast (NT-Xent / InfoNCE over 2N samples).

    For each of the 2N anchors the positive is the same image's other view and the negatives
    are the other 2N-2 samples; the anchor itself is excluded. Returns the mean over the 2N
    anchors (CC sums cross-entropies and divides by 2N). Inputs are L2-normalised here, so
    similarities are cosines divided by ``temperature``.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError("nt_xent expects two N×D tensors of equal shape, "
                         f"got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n = z_a.shape[0]
    if n < 2:
        raise ValueError("nt_xent needs at least 2 samples per batch (no negatives otherwise)")
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def assignment_entropy_gap(p: torch.Tensor) -> torch.Tensor:
    """``log K - H(mean assignment)`` for soft assignments p (N×K): 0 when clusters are used
    uniformly, ``log K`` when everything falls in one cluster. CC adds this per view; the
    ``log K`` constant only keeps the value non-negative (CC issue #34)."""
    k = p.shape[1]
    marginal = p.sum(0)
    marginal = marginal / marginal.sum()
    return math.log(k) + (marginal * torch.log(marginal.clamp_min(1e-12))).sum()


def cluster_contrast(p_a: torch.Tensor, p_b: torch.Tensor, temperature: float = 1.0,
                     entropy_weight: float = 1.0) -> torch.Tensor:
    """Cluster-level contrast on the *columns* of two soft-assignment matrices (N×K each).

    Each of the 2K columns (a cluster's assignment vector over the batch) has the same
    cluster in the other view as positive and the other 2K-2 columns as negatives, with
    cosine similarity / ``temperature``; mean over the 2K columns. Plus, per view,
    ``entropy_weight * (log K - H(p^v))`` which prevents the trivial one-cluster solution.
    """
    if p_a.shape != p_b.shape or p_a.dim() != 2:
        raise ValueError("cluster_contrast expects two N×K tensors of equal shape, "
                         f"got {tuple(p_a.shape)} and {tuple(p_b.shape)}")
    k = p_a.shape[1]
    c = F.normalize(torch.cat([p_a.t(), p_b.t()], dim=0), dim=1)
    sim = c @ c.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=c.device), float("-inf"))
    target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(c.device)
    contrast = F.cross_entropy(sim, target)
    if entropy_weight == 0:
        return contrast
    return contrast + entropy_weight * (assignment_entropy_gap(p_a) + assignment_entropy_gap(p_b))
