"""The two contexts a component sees: :class:`BuildContext` while it is built, :class:`RunContext`
in every call afterwards. Both are part of the public API (docs/api.md): every public member is
documented there, and the engine's own state stays behind them (``clustkit.engine.state``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from clustkit import dist
from clustkit.engine import evaluation, features, grouping
from clustkit.errors import PluginError, RecipeError

if TYPE_CHECKING:
    from clustkit.cluster.kmeans import KMeansResult
    from clustkit.cluster.prediction import Prediction
    from clustkit.engine.batches import BatchSource
    from clustkit.engine.network import Network
    from clustkit.engine.state import RunState
    from clustkit.recipe.schema import Recipe

T = TypeVar("T")

_ENGINE = "it is engine state, which components do not reach"
#: clustkit 0.1's RunContext members that are gone, and what to use instead.
_REMOVED = {
    "hook": "use ctx.make_views(images, train) for the views; lifecycle notifications reach a component that has "
            "the method",
    "pm": _ENGINE, "components": f"{_ENGINE}; components that cooperate do so through out.extras or "
                                 "BuildContext.shared",
    "recipe_evaluation": "use ctx.evaluate()",
    "clustering": "a refinement stage gets the previous clustering as refine(previous, ctx); ctx.select(previous) "
                  "gives the label-free choice",
    "grouping_shards": "a grouper's assign_groups receives rows (None: the whole matrix)",
    **{name: _ENGINE for name in ("optimizer", "scheduler", "sources", "console", "checkpointer", "history",
                                  "assignment", "phase", "current_pass", "total_steps", "steps_per_epoch",
                                  "momentum_value", "wall_s", "extract_spaces_shard", "started", "wall_before")},
}


@dataclass(frozen=True)
class BuildContext:
    """What a component factory ``factory(config, ctx)`` may read while the run is being built.

    The engine builds components in recipe order (dataset, backbone, heads, views, losses,
    grouping, evaluation, refine); a field that describes a part not built yet is 0 or empty
    (``backbone_dim`` while the backbone itself is built, ``view_names`` before the views).
    """

    recipe: Recipe
    key: str                        # this component's recipe key, e.g. "losses.instance"
    device: torch.device
    n_items: int = 0                # items in [data]
    in_channels: int = 0
    image_size: tuple[int, int] = (0, 0)
    n_clusters: int = 0
    backbone_dim: int = 0
    view_names: tuple[str, ...] = ()  # training views the view generator declared
    _store: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # behind shared()

    @property
    def seed(self) -> int:
        return self.recipe.run.seed

    def shared(self, name: str, factory: Callable[[], T]) -> T:
        """The object several components of this run share under ``name`` (e.g. DCHL's cluster
        trunk, one module for two heads): made by ``factory()`` for the first caller, the same
        object for every later one. Prefix ``name`` with your plugin's name."""
        if name not in self._store:
            self._store[name] = factory()
        return self._store[name]

    def error(self, key: str, message: str, allowed: list[str] | None = None) -> RecipeError:
        """An error naming the recipe file and ``<this component's key>.<key>`` (raise it)."""
        return RecipeError(self.recipe.path, f"{self.key}.{key}" if key else self.key, message, allowed)




@dataclass(eq=False)
class RunContext:
    """What a component receives in every call after the run is built: the run's description, its
    network, the counters, and the engine's services (views, features, grouping, evaluation).

    The engine owns the counters (``epoch``, ``step``) and the network; components read them and
    change only their own state. Everything here is documented in docs/api.md.
    """

    recipe: Recipe
    device: torch.device
    dataset: Any
    n_clusters: int
    in_channels: int
    image_size: tuple[int, int]
    backbone_dim: int
    model: Network
    epoch: int = 0  # epochs completed so far: the 0-based index of the epoch running, in its hooks
    step: int = 0   # optimizer steps so far
    _momentum: Network | None = field(default=None, repr=False)
    _run: RunState | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:
        """Only reached for a name the context does not have: clustkit 0.1's members say what replaced them."""
        instead = _REMOVED.get(name)
        if instead is None:
            raise AttributeError(f"'RunContext' object has no attribute {name!r} (its members: docs/api.md)")
        raise AttributeError(f"RunContext.{name} was removed in clustkit 0.2: {instead} (docs/api.md, 'From "
                             "clustkit 0.1').")

    # -- what the recipe and the launcher decided ------------------------------------------
    @property
    def epochs(self) -> int:
        return self.recipe.run.epochs

    @property
    def seed(self) -> int:
        return self.recipe.run.seed

    @property
    def rank(self) -> int:
        return dist.rank()

    @property
    def world_size(self) -> int:
        return dist.world_size()

    @property
    def is_main(self) -> bool:
        return dist.is_main()

    @property
    def source(self) -> BatchSource:
        """The batches of ``[data]``: ``train_batches(epoch, indices=None)``, ``eval_batches(indices)``,
        ``unreadable`` (index -> why)."""
        return self._engine.sources["data"]

    @property
    def has_momentum(self) -> bool:
        return self._momentum is not None

    @property
    def momentum_model(self) -> Network:
        """The momentum (EMA) network; only recipes with a ``[momentum]`` section have one."""
        if self._momentum is None:
            raise RuntimeError("this recipe has no [momentum] section, so there is no momentum network")
        return self._momentum

    @property
    def _engine(self) -> RunState:
        if self._run is None:
            raise RuntimeError("this RunContext is not attached to a built run")
        return self._run

    # -- helpers ------------------------------------------------------------------------------
    def print(self, *args: Any) -> None:
        """Print on rank 0 only; text is shown as is (square brackets are not rich markup)."""
        if self.is_main:
            self._engine.console.print(*args, markup=False, highlight=False, soft_wrap=True)

    def autocast(self) -> Any:
        """The run's mixed-precision context (bf16 when ``run.precision`` asks for it)."""
        enabled = self.recipe.run.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def save_checkpoint(self) -> None:
        """Write a checkpoint now (refinement stages call this to make their progress resumable)."""
        self._engine.save_checkpoint()

    # -- the engine's services ----------------------------------------------------------------
    def make_views(self, images: torch.Tensor, train: bool = True,
                   index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The recipe's ``[views]`` of a float batch in [0, 1] on the run device: the training views
        by name, or with ``train=False`` ``{"eval": view}``. In a run on cached features
        (``[features]``) a batch is rows of features: its evaluation view is itself, and its training
        views come from the cache by the batch's dataset ``index`` (pass it)."""
        cached = self._engine.features
        if cached is not None and images.dim() == 2:
            if not train:
                return {"eval": images}
            if index is None:
                raise PluginError("ctx.make_views(images, train=True) was called on a batch of cached features "
                                  "without its index: in a run with [features] the training views are drawn from "
                                  "the cache by item, so pass index= (the batch's dataset indices).")
            return cached(index)
        views = self._engine.components.views
        made = views.call(images=images, train=train, ctx=self)
        if not isinstance(made, Mapping) or (not train and "eval" not in made) or (train and not made):
            want = "{'eval': tensor}" if not train else "{view name: tensor}"
            raise PluginError(f"{views.describe()} returned {type(made).__name__} from make_views(train={train}); "
                              f"it must return {want}.")
        return dict(made)

    def extract(self, head: str | None = None, *, momentum: bool = False, indices: Any = None,
                source: BatchSource | None = None) -> torch.Tensor:
        """Features (backbone, or head ``head``) of every item (or of ``indices``, in that order)
        of ``[data]`` (or of ``source``) on the evaluation view, on the CPU, on every rank (in a
        multi-process run each rank computes its shard, then the shards are all-gathered)."""
        space = "backbone" if head is None else head
        return features.extract_spaces(self._engine, [space], momentum=momentum, indices=indices, source=source)[space]

    def extract_shard(self, head: str | None = None, *, momentum: bool = False, indices: Any = None,
                      source: BatchSource | None = None) -> tuple[torch.Tensor, range]:
        """:meth:`extract` for this rank's contiguous slice of the items only: ``(features, rows)``,
        ``rows`` the slice's positions in the item order. Every rank must call it; on one process
        the slice is everything. Pass both to :meth:`group` so no rank holds the whole matrix."""
        space = "backbone" if head is None else head
        feats, rows = features.extract_spaces_shard(self._engine, [space], momentum=momentum, indices=indices,
                                                    source=source)
        return feats[space], rows

    def extract_spaces(self, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                       source: BatchSource | None = None) -> dict[str, torch.Tensor]:
        """:meth:`extract` for several spaces ("backbone" or head names) in one pass over the data."""
        return features.extract_spaces(self._engine, spaces, momentum=momentum, indices=indices, source=source)

    def group(self, features: Any, n_groups: int | None = None, *, spherical: bool = False, seed: int | None = None,
              n_init: int | None = None, rows: range | None = None) -> KMeansResult:
        """Cluster features with the recipe's ``[grouping]`` (default: k-means) into ``n_groups``
        (default ``n_clusters``); every rank gets the result with the labels of all N rows.
        ``features``: the whole N x D matrix (tensor or array), or with ``rows`` this rank's rows
        of it (:meth:`extract_shard`). ``n_init``: restarts (None: the grouper's own setting)."""
        return grouping.group(self._engine, features, n_groups or self.n_clusters, spherical=spherical,
                              seed=self.seed if seed is None else seed, n_init=n_init, rows=rows)

    def vote(self, pred: Prediction, cfg: Any, *, at_hand: dict[str, Any] | None = None,
             metric: str = "cosine") -> Prediction:
        """``pred`` after the neighbour vote its evaluator's config asks for (an ``EvaluatorConfig``;
        ``pred`` itself when ``cfg.vote_k`` is 0). ``at_hand``: whole feature matrices by space that
        the caller has already (the voting space is extracted when it is not among them)."""
        return evaluation.vote(self._engine, pred, cfg, at_hand, metric)

    def evaluate(self) -> Prediction:
        """The recipe's ``[evaluation]`` on the network as it is now (a refinement stage re-clusters
        the network it has changed this way)."""
        return evaluation.evaluation(self._engine)

    def select(self, pred: Prediction, *, exclude: tuple[str, ...] = ()) -> Prediction:
        """The label-free choice (``run.select``) among the run's candidate clusterings now, with
        ``pred`` as the recipe's own; ``exclude`` leaves out heads not trained yet."""
        return evaluation.chosen(self._engine, pred, exclude=exclude)[0]
