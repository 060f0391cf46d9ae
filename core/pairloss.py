"""A base for loss components summed over the recipe's view pairs.

CC, SACC and DCHL (and any third-party plugin) express their contrastive terms as "this
equation, summed over these pairs of views, on this head". The base checks the pairs against
the view generator when the run is built, so a typo fails before training with the key named,
and names the term after its recipe key (``[losses.instance]`` -> ``instance``) so that logs,
``metrics.jsonl`` and bench tables show what the recipe called it.
"""

from __future__ import annotations

from typing import Any

import torch

from clustkit import hookimpl
from clustkit.engine.context import RunContext
from clustkit.engine.outputs import StepOutputs
from clustkit.errors import RecipeError

Pair = tuple[str, str]


def view_names(ctx: RunContext) -> list[str]:
    """The training views the recipe's view generator makes (empty when it does not say)."""
    views = ctx.components.get("views")
    return list(getattr(views, "view_names", None) or getattr(views, "names", None) or [])


def check_view_pairs(pairs: list[Pair], ctx: RunContext, key: str) -> None:
    """Fail at build time when a pair repeats a view or names one the view generator does not make."""
    names = view_names(ctx)
    for i, (a, b) in enumerate(pairs):
        if a == b:
            raise RecipeError(ctx.recipe.path, f"{key}.pairs[{i}]", f"pairs a view with itself ({a!r}).")
        for v in (a, b):
            if names and v not in names:
                raise RecipeError(ctx.recipe.path, f"{key}.pairs[{i}]", f"names view {v!r}, which the view generator "
                                  f"({ctx.recipe.views.name!r}) does not produce.", names)


class PairLoss:
    """``weight * sum over cfg.pairs of pair_loss(head(u), head(v))``, one term named after the key.

    Subclasses implement :meth:`pair_loss`; the config needs ``head``, ``pairs`` and ``weight``.
    """

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg = cfg
        self.pairs: list[Pair] = [(str(p[0]), str(p[1])) for p in cfg.pairs]
        self.term = ctx.current_key.split(".")[-1] or cfg.name
        check_view_pairs(self.pairs, ctx, ctx.current_key)

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @hookimpl
    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> dict[str, torch.Tensor]:
        h = self.cfg.head
        total = sum(self.pair_loss(out.head(u, h), out.head(v, h)) for u, v in self.pairs)
        return {self.term: self.cfg.weight * total}
