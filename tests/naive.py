"""Naive references written from the formulas (docs/methods/cc.md), loop by loop, shared by the
loss tests of the core and of every plugin that reuses CC's two contrasts."""

from __future__ import annotations

import math

import torch


def naive_nt_xent(za: torch.Tensor, zb: torch.Tensor, tau: float) -> torch.Tensor:
    z = [v / v.norm() for v in list(za) + list(zb)]
    n = za.shape[0]
    total = za.new_zeros(())
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = za.new_zeros(())
        for j in range(2 * n):
            if j != i:
                denom = denom + torch.exp(torch.dot(z[i], z[j]) / tau)
        total = total - torch.log(torch.exp(torch.dot(z[i], z[pos]) / tau) / denom)
    return total / (2 * n)


def naive_cluster_contrast(pa: torch.Tensor, pb: torch.Tensor, tau: float, ew: float) -> torch.Tensor:
    k = pa.shape[1]
    cols = [c for c in pa.t()] + [c for c in pb.t()]
    total = pa.new_zeros(())
    for i in range(2 * k):
        pos = (i + k) % (2 * k)
        sims = [torch.dot(cols[i], cols[j]) / (cols[i].norm() * cols[j].norm()) / tau for j in range(2 * k)]
        denom = sum(torch.exp(sims[j]) for j in range(2 * k) if j != i)
        total = total - torch.log(torch.exp(sims[pos]) / denom)
    contrast = total / (2 * k)
    ent = pa.new_zeros(())
    for p in (pa, pb):
        m = p.sum(0) / p.sum()
        ent = ent + math.log(k) + sum(m[j] * torch.log(m[j]) for j in range(k))
    return contrast + ew * ent
