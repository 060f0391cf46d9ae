"""One training step, top to bottom (:func:`train_step`), and what its losses read (:class:`StepOutputs`).

The losses are called directly, by recipe key, in recipe order; each returns its unweighted
terms, which the engine names after the key, weights and sums.

Heads are evaluated lazily and cached, so a head that no active loss asks for is never run.
When several processes train together, ``head()``/``target()``/``index``/``labels`` return the
*global* batch (gathered with gradients), so every loss sees the same batch on every rank and
needs no distributed code of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from clustkit import dist
from clustkit.engine.network import ema_update
from clustkit.errors import PluginError

if TYPE_CHECKING:
    from clustkit.engine.batches import Batch
    from clustkit.engine.components import Bound
    from clustkit.engine.context import RunContext
    from clustkit.engine.state import RunState


class StepOutputs:
    """The batch, its views, and the network's outputs on them, for the losses of one step.

    ``extras`` is a scratch dict the components of one step share (e.g. DigPro's predictions,
    DCHL's in-batch groups); it is new every step. Key entries by a tuple that starts with your
    plugin's name.
    """

    def __init__(self, ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                 views: dict[str, torch.Tensor]):
        self._ctx = ctx
        self.images = images
        self.views = views
        self._labels = labels
        self._index = index
        self._cache: dict[tuple[str, str | None, bool, bool], torch.Tensor] = {}
        self.extras: dict[Any, Any] = {}

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
        net = self._ctx.momentum_model if momentum else self._ctx.model
        if gather:
            value = dist.gather_with_grad(self._get(view, head, momentum, False))
        elif head is None:
            with torch.no_grad() if momentum else torch.enable_grad():
                value = net.features(self.views[view])
        else:
            if head not in net.heads:
                raise KeyError(f"head {head!r} is not in the {'momentum' if momentum else 'online'} network; "
                               f"heads are {sorted(net.heads)}")
            feats = self._get(view, net.head_input(head), momentum, False)  # a predictor reads its projector
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


def loss_terms(run: RunState, out: StepOutputs, losses: Mapping[str, Bound]) -> dict[str, torch.Tensor]:
    """Each loss's terms, named and weighted after its recipe key, in recipe order: ``[losses.cluster]``
    returning a tensor gives ``cluster``; returning ``{"self": t}`` gives ``cluster_self``."""
    terms: dict[str, torch.Tensor] = {}
    for term, loss in losses.items():
        result = loss.call(out=out, ctx=run.ctx)
        if result is None:
            continue
        if isinstance(result, torch.Tensor):
            parts = {term: result}
        elif isinstance(result, Mapping):
            parts = {f"{term}_{k}": v for k, v in result.items()}
        else:
            raise PluginError(f"{loss.describe()} returned {type(result).__name__} from compute_loss; it must return a "
                              "scalar tensor, {part: tensor} or None.")
        weight = run.recipe.losses[term].weight
        for name, value in parts.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise PluginError(f"{loss.describe()} returned {_shape(value)} for the term {name!r}; each term must "
                                  "be a scalar tensor.")
            if name in terms:
                raise PluginError(f"{loss.describe()} returned the term {name!r}, which another loss of the recipe "
                                  "returned too; rename a part or a [losses.<id>] key.")
            terms[name] = weight * value.float().reshape(())
    if not terms:
        raise RuntimeError("no loss term was computed: every loss has weight 0 or the recipe has no [losses]")
    return terms


def _shape(value: object) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def train_step(run: RunState, batch: Batch, losses: Mapping[str, Bound]) -> dict[str, torch.Tensor]:
    """One optimizer step on ``batch`` with ``losses`` (this pass's); returns the detached loss terms
    (still on the device)."""
    ctx = run.ctx
    images, labels, index = batch
    views = ctx.make_views(images, train=True, index=index)                   # the recipe's [views]
    if run.recipe.run.channels_last:              # NHWC kernels (GPU tensor cores, CPU oneDNN/AMX)
        views = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in views.items()}
    out = StepOutputs(ctx, images, labels, index, views)                      # heads run when a loss asks
    with ctx.autocast():                                                      # bf16 when run.precision asks
        terms = loss_terms(run, out, losses)                                  # weighted, named after recipe keys
    loss = torch.stack(list(terms.values())).sum()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients(ctx.model.parameters())                            # no-op on one process
    run.optimizer.step()
    run.scheduler.step()                                                      # the lr schedule is per step
    ctx.step += 1
    if ctx.has_momentum:                                                      # BYOL/MoCo-style target network
        ema_update(ctx.momentum_model, ctx.model, run.momentum_value(), run.recipe.momentum.buffers == "copy")
    with torch.no_grad():                                                     # EMA groups, banks, prototypes
        for updater in run.components.updaters:                               # in recipe order
            updater.call(out=out, ctx=ctx)
    return {**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach()}
