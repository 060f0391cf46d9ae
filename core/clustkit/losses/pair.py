"""Losses summed over the recipe's view pairs: the base :class:`PairLoss` and the two contrasts.

CC, SACC, DCHL, IcicleGCN (and any third-party plugin) express their contrastive terms as "this
equation, summed over these pairs of views, on this head". The base checks the pairs against
the view generator when the run is built, so a typo fails before training with the key named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from clustkit.losses.contrast import cluster_contrast, nt_xent
from clustkit.plugin_system.registry import Pair, unknown_view

if TYPE_CHECKING:
    from clustkit.engine.context import BuildContext, RunContext
    from clustkit.engine.step import StepOutputs


def check_view_pairs(pairs: list[Pair], ctx: BuildContext, field: str = "pairs") -> None:
    """Fail at build time when a pair repeats a view or names one the view generator does not make."""
    for i, (a, b) in enumerate(pairs):
        if a == b:
            raise ctx.error(f"{field}[{i}]", f"pairs a view with itself ({a!r}).")
        for v in (a, b):
            if ctx.view_names and v not in ctx.view_names:
                raise ctx.error(f"{field}[{i}]", unknown_view(v, ctx.recipe.views.name), list(ctx.view_names))


class PairLoss:
    """``sum over cfg.pairs of pair_loss(head(u), head(v))`` on head ``cfg.head`` (config: a
    :class:`~clustkit.losses.configs.PairLossConfig`). Subclasses write :meth:`pair_loss`."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.pairs: list[Pair] = [(str(p[0]), str(p[1])) for p in cfg.pairs]
        check_view_pairs(self.pairs, ctx)

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor:
        h = self.cfg.head
        return sum(self.pair_loss(out.head(u, h), out.head(v, h)) for u, v in self.pairs)


class InstanceContrast(PairLoss):
    """NT-Xent on the instance head, summed over pairs (CC's L_ins; τ_I = 0.5 by default)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.cfg.temperature)


class ClusterContrast(PairLoss):
    """Cluster contrast on the soft-assignment columns plus log K − H(p) per view, summed over
    pairs (CC's L_clu; τ_C = 1.0 by default)."""

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cluster_contrast(a, b, self.cfg.temperature, self.cfg.entropy_weight)
