"""What a component is: a plain object whose role's method the engine calls directly.

A recipe section builds one object through its plugin's factory, ``factory(config, ctx)``. The
section's kind gives the object its role, and the role one method, which the engine calls by
recipe key, in recipe order, with keyword arguments named as below (a method may leave out
arguments it does not need). Any component may also implement the optional methods of
:class:`HeadBuilder`, :class:`PrototypeUpdater` and :class:`CandidateSource`, and the lifecycle
notifications of ``clustkit.plugin_system.hookspecs`` (``on_epoch_start``, ``checkpoint_state``,
...), which it receives through the run's plugin manager with every other observer.

These Protocols are for type checkers and readers; the engine checks each built component's
method and signature itself (``clustkit.engine.components``), so a missing method or argument is
an error naming the plugin and the recipe key before training starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from clustkit.cluster.kmeans import KMeansResult
    from clustkit.cluster.prediction import Prediction
    from clustkit.engine.context import BuildContext, RunContext
    from clustkit.engine.step import StepOutputs


@runtime_checkable
class ViewGenerator(Protocol):
    """``[views]``: named training views of a batch, or the evaluation view ``"eval"``."""

    view_names: Sequence[str]

    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        """``images``: float B×C×H×W in [0, 1] on the run device. Train: ``{name: view}`` for every
        name of ``view_names``; ``train=False``: ``{"eval": view}``, deterministic."""
        ...


@runtime_checkable
class Loss(Protocol):
    """``[losses.<id>]``: one or more loss terms per training step."""

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor | Mapping[str, torch.Tensor] | None:
        """A scalar tensor (the term ``<id>``), ``{part: tensor}`` (terms ``<id>_<part>``) or None / {}
        (nothing this step), unweighted: the engine multiplies every term by the recipe's ``weight``,
        logs the weighted values and sums them."""
        ...


@runtime_checkable
class Grouper(Protocol):
    """``[grouping]``: clusters a feature matrix (the recipe's k-means, or another method)."""

    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, n_init: int | None,
                      rows: range | None, ctx: RunContext) -> KMeansResult:
        """``features``: an N×D float torch tensor on the CPU, or a NumPy array. ``rows`` is None
        when it is the whole matrix; in a multi-process run a grouper whose class sets
        ``accepts_shards = True`` gets this rank's rows ``rows`` of it and clusters them together
        with the other ranks. Returns a ``KMeansResult``; a method without centres returns the
        mean of each group as ``centroids``."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """``[evaluation]``: the recipe's clustering of the network as it is now."""

    def evaluate(self, ctx: RunContext) -> Prediction:
        ...


@runtime_checkable
class Refiner(Protocol):
    """``[refine.<id>]``: a stage after training. Stages run in recipe order; each receives the
    previous one's output (the first: the recipe's evaluation) and returns its own, and the last
    one's is the run's clustering. Called again after a resume: a finished stage returns its result."""

    def refine(self, previous: Prediction, ctx: RunContext) -> Prediction:
        ...


@runtime_checkable
class HeadBuilder(Protocol):
    """Optional, any component: trainable heads of its own, put into the network beside the
    recipe's ``[heads.*]`` (saved with it, read by ``clustkit predict``)."""

    def build_heads(self, in_dim: int, ctx: BuildContext) -> dict[str, torch.nn.Module]:
        ...


@runtime_checkable
class PrototypeUpdater(Protocol):
    """Optional, any component: called after every optimizer step without gradients, in recipe
    order, with the step's outputs (EMA groups, memory banks, momentum prototypes)."""

    def update_prototypes(self, out: StepOutputs, ctx: RunContext) -> None:
        ...


@runtime_checkable
class CandidateSource(Protocol):
    """Optional, any component: clusterings it can give besides the engine's own, called once at
    the end of a run (``{name: Prediction}``; the name should be the prediction's ``name``)."""

    def candidates(self, ctx: RunContext) -> Mapping[str, Prediction] | None:
        ...


#: The method each kind of component must have, and the keyword arguments the engine passes to it.
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "views": ("make_views", ("images", "train", "ctx")),
    "loss": ("compute_loss", ("out", "ctx")),
    "grouper": ("assign_groups", ("features", "n_groups", "spherical", "seed", "n_init", "rows", "ctx")),
    "evaluator": ("evaluate", ("ctx",)),
    "refiner": ("refine", ("previous", "ctx")),
}
#: Methods any component may have, and their keyword arguments.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "build_heads": ("in_dim", "ctx"),
    "update_prototypes": ("out", "ctx"),
    "candidates": ("ctx",),
}
