"""The ``align_uniform`` loss component (imported only when a recipe uses it).

It imports nothing from clustkit but the public types. ``compute_loss`` is a plain method that the
engine calls at every step; it names the term after the recipe key (``[losses.uniform]`` ->
``uniform``) and multiplies it by ``weight``.
"""

from __future__ import annotations

from typing import Any

import torch

from clustkit import BuildContext, RunContext, StepOutputs


def align_uniform(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0, t: float = 2.0,
                  uniformity_weight: float = 1.0) -> torch.Tensor:
    """E‖z_a − z_b‖^α  +  w · ½ Σ_views log E_{i≠j} exp(−t‖z_i − z_j‖²)."""
    align = (z_a - z_b).norm(dim=1).pow(alpha).mean()

    def uniform(z: torch.Tensor) -> torch.Tensor:
        return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()

    return align + uniformity_weight * (uniform(z_a) + uniform(z_b)) / 2


class AlignUniform:
    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor:
        c = self.cfg
        return align_uniform(out.head(c.view_a, c.head), out.head(c.view_b, c.head), c.alpha, c.t, c.uniformity_weight)
