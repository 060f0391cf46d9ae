"""Per-batch outputs that losses read: features and head outputs, computed on demand.

Heads are evaluated lazily and cached, so a head that no active loss asks for is never
run. When several processes train together, ``head()``/``target()``/``index``/``labels``
return the *global* batch (gathered with gradients), so every loss sees the same batch
on every rank and needs no distributed code of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from clustkit import dist

if TYPE_CHECKING:
    from clustkit.engine.context import RunContext


class StepOutputs:
    def __init__(self, ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                 views: dict[str, torch.Tensor]):
        self.ctx = ctx
        self.images = images
        self.views = views
        self._labels = labels
        self._index = index
        self._cache: dict[tuple[str, str | None, bool, bool], torch.Tensor] = {}
        self.extras: dict[str, Any] = {}  # scratch space shared by components within a step

    @property
    def view_names(self) -> list[str]:
        return list(self.views)

    @property
    def index(self) -> torch.Tensor:
        """Dataset indices of the global batch (rows of every ``head()`` output)."""
        return dist.gather_no_grad(self._index)

    @property
    def labels(self) -> torch.Tensor:
        """Ground-truth labels of the global batch (-1 where unknown); never used for training."""
        return dist.gather_no_grad(self._labels)

    def _get(self, view: str, head: str | None, momentum: bool, gather: bool) -> torch.Tensor:
        key = (view, head, momentum, gather)
        if key in self._cache:
            return self._cache[key]
        if view not in self.views:
            raise KeyError(f"view {view!r} not produced by the view generator; views are {self.view_names}")
        if gather:
            value = dist.gather_with_grad(self._get(view, head, momentum, False))
        elif head is None:
            net = self.ctx.momentum_model if momentum else self.ctx.model
            if net is None:
                raise RuntimeError("this recipe has no [momentum] section, so there is no momentum network")
            with torch.no_grad() if momentum else torch.enable_grad():
                value = net.features(self.views[view])
        else:
            net = self.ctx.momentum_model if momentum else self.ctx.model
            assert net is not None
            if head not in net.heads:
                raise KeyError(f"head {head!r} is not in the {'momentum' if momentum else 'online'} network; "
                               f"heads are {sorted(net.heads)}")
            feats = self._get(view, None, momentum, False)
            with torch.no_grad() if momentum else torch.enable_grad():
                value = net.heads[head](feats)
        self._cache[key] = value
        return value

    def features(self, view: str, *, local: bool = False) -> torch.Tensor:
        """Backbone features of a view (global batch unless ``local``)."""
        return self._get(view, None, False, not local)

    def head(self, view: str, name: str, *, local: bool = False) -> torch.Tensor:
        """Output of head ``name`` on a view (global batch unless ``local``)."""
        return self._get(view, name, False, not local)

    def target(self, view: str, name: str | None = None, *, local: bool = False) -> torch.Tensor:
        """Momentum-network output (no gradient): backbone features, or head ``name``."""
        return self._get(view, name, True, not local)
