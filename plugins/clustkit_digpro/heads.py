"""DigPro's heads: the BYOL projector and the predictor that maps the projector's output."""

from __future__ import annotations

from typing import Any

from torch import nn

from clustkit import BuildContext
from clustkit.nn.heads import MLPHead


def head_out_dim(ctx: BuildContext, name: str) -> int:
    """The output size of the recipe's head ``name`` (a predictor or a group bank sits on it)."""
    dim = getattr(ctx.recipe.heads[name], "out_dim", None)  # the recipe loader checked the name
    if dim == "n_clusters":
        return ctx.n_clusters
    if not isinstance(dim, int):
        raise ValueError(f"cannot tell the output size of head {name!r}; give it an integer out_dim")
    return dim


def build_projector(cfg: Any, ctx: BuildContext) -> nn.Module:
    return MLPHead(ctx.backbone_dim, [cfg.hidden], cfg.out_dim, output="none", batch_norm=True)


class Predictor(MLPHead):
    """Linear → BN → ReLU → Linear on the *projector output* (not the backbone): ``input_head``
    names the projector, so ``out.head(view, "predictor")`` and ``ctx.extract("predictor")`` apply
    the projector first (``Network.head``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, input_head: str, init_std: float):
        super().__init__(in_dim, [hidden], out_dim, output="none", batch_norm=True)
        self.input_head = input_head
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.zeros_(m.bias)


def build_predictor(cfg: Any, ctx: BuildContext) -> nn.Module:
    in_dim = head_out_dim(ctx, cfg.input)
    return Predictor(in_dim, cfg.hidden, cfg.out_dim or in_dim, cfg.input, cfg.init_std)
