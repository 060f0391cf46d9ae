"""The two contexts a component sees: :class:`BuildContext` while it is built, :class:`RunContext`
in every run hook afterwards. Both are part of the public API (docs/api.md)."""

from __future__ import annotations

import math
import time
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np
import torch

from clustkit import dist
from clustkit.engine.batches import steps_per_epoch
from clustkit.errors import RecipeError, RunDiverged

if TYPE_CHECKING:
    import pluggy
    from rich.console import Console

    from clustkit.engine.batches import BatchSource
    from clustkit.engine.checkpoint import Checkpointer
    from clustkit.engine.network import Network
    from clustkit.recipe.schema import Recipe

T = TypeVar("T")


@dataclass
class Prediction:
    """One cluster id per dataset item, in index order (what evaluators return)."""

    labels: np.ndarray
    source: str = ""
    scores: np.ndarray | None = None  # e.g. max soft-assignment, distance to centroid
    extra: dict[str, Any] = field(default_factory=dict)
    # How a trained run assigns an image it has not seen (``clustkit predict``): ``rule`` "argmax"
    # takes the argmax of head ``space``; "centroid" the nearest mean, over the run's clusters, of
    # the features ``space`` ("backbone" or a head's name), "cosine_centroid" the same on
    # L2-normalised features; ``momentum`` reads the momentum network.
    space: str = "backbone"
    rule: str = "centroid"
    momentum: bool = False
    centroids: np.ndarray | None = None  # the clusters' centres in ``space``, when the evaluator has them


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
    """Shared state of a built run; every run hook receives it. No field is None.

    Components read it and may change their own state; the engine owns the counters
    (``epoch``, ``step``, ``phase``) and the network. ``components`` maps recipe keys
    (``"losses.instance"``, ``"views"``) to the built components, read-only.
    """

    recipe: Recipe
    device: torch.device
    dataset: Any
    n_clusters: int
    in_channels: int
    image_size: tuple[int, int]
    backbone_dim: int
    model: Network
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sources: dict[str, BatchSource]   # the passes of an epoch, in order ("unlabeled" first, then "data")
    pm: pluggy.PluginManager
    components: dict[str, Any]
    console: Console
    checkpointer: Checkpointer
    momentum: InitVar[Network | None] = None
    total_steps: int = 0
    epoch: int = 0                    # epochs completed so far (the current epoch's index while training)
    step: int = 0                     # optimizer steps so far
    phase: str = "train"              # "train" -> "post" (after_training) -> "done"
    current_pass: str = "data"        # "unlabeled" during the [unlabeled] pass of an epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one entry per epoch
    assignment: dict[str, Any] = field(default_factory=dict)  # how the finished run assigns new images
    wall_before: float = 0.0          # seconds spent by earlier invocations (resume)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self, momentum: Network | None) -> None:
        self._momentum = momentum

    # -- what the recipe and the launcher decided ------------------------------------------
    @property
    def hook(self) -> Any:
        return self.pm.hook

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
        """The batches of ``[data]`` (evaluation and ``extract`` use these)."""
        return self.sources["data"]

    @property
    def has_momentum(self) -> bool:
        return self._momentum is not None

    @property
    def momentum_model(self) -> Network:
        """The momentum (EMA) network; only recipes with a ``[momentum]`` section have one."""
        if self._momentum is None:
            raise RuntimeError("this recipe has no [momentum] section, so there is no momentum network")
        return self._momentum

    # -- helpers ------------------------------------------------------------------------------
    def print(self, *args: Any) -> None:
        """Print on rank 0 only; text is shown as is (square brackets are not rich markup)."""
        if self.is_main:
            self.console.print(*args, markup=False, highlight=False, soft_wrap=True)

    def wall_s(self) -> float:
        """Seconds this run has taken, across resumed invocations."""
        return self.wall_before + time.perf_counter() - self.started

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: every pass ([unlabeled] if any, then [data])."""
        return steps_per_epoch(self.sources)

    def momentum_value(self) -> float:
        """The EMA momentum at the current step (constant, or a cosine ramp to ``momentum.final``)."""
        cfg = self.recipe.momentum
        if cfg is None:
            return 0.0
        if cfg.final is None or self.total_steps == 0:
            return cfg.base
        progress = min(1.0, self.step / self.total_steps)
        return cfg.final - (cfg.final - cfg.base) * (math.cos(math.pi * progress) + 1) / 2

    def autocast(self) -> Any:
        enabled = self.recipe.run.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def save_checkpoint(self) -> None:
        """Write a checkpoint now (second stages call this to make their progress resumable)."""
        self.checkpointer.save(self)

    # -- whole-dataset operations ---------------------------------------------------------------
    def extract(self, head: str | None = None, *, momentum: bool = False,
                indices: Any = None, source: BatchSource | None = None) -> torch.Tensor:
        """Features (backbone, or head ``head``) of every item (or of ``indices``, in that order)
        of ``[data]`` (or of ``source``) on the evaluation view, on the CPU. Used by evaluators,
        per-epoch clustering, second stages, the report and ``clustkit predict``."""
        space = "backbone" if head is None else head
        return self.extract_spaces([space], momentum=momentum, indices=indices, source=source)[space]

    @torch.no_grad()
    def extract_spaces(self, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                       source: BatchSource | None = None) -> dict[str, torch.Tensor]:
        """:meth:`extract` for several spaces ("backbone" or a head's name) in one pass over the
        data: what the run's candidate clusterings and ``clustkit evaluate`` read."""
        net = self.momentum_model if momentum else self.model
        was_training = net.training
        net.eval()
        parts: dict[str, list[torch.Tensor]] = {s: [] for s in spaces}
        try:
            for x, _, _ in (source or self.source).eval_batches(indices):
                view = self.hook.make_views(images=x, train=False, ctx=self)["eval"]
                with self.autocast():
                    f = net.features(view)
                    for s in spaces:
                        parts[s].append((f if s == "backbone" else net.head(f, s)).float().cpu())
        finally:
            net.train(was_training)
        return {s: torch.cat(p) for s, p in parts.items()}

    def clustering(self, *, select: bool = False, exclude: tuple[str, ...] = ()) -> tuple[Prediction, str]:
        """The run's current clustering and its name: the evaluation (the recipe's evaluator, or
        the labels of a finished ``[refine.*]`` stage), or with ``select`` the label-free choice
        among every candidate clustering (``run.select``; ``exclude`` leaves out heads a later
        stage has not trained yet). What a refinement stage starts from."""
        from clustkit.engine.candidates import candidate_name, choose
        from clustkit.engine.reporting import sample_features
        from clustkit.engine.run import evaluate

        pred, _ = evaluate(self)
        if not select:
            return pred, candidate_name(pred)
        chosen, record = choose(self, pred, sample_features(self), exclude=exclude)
        return chosen, record["selection"]["chosen"]

    def group(self, features: Any, n_groups: int | None = None, *, spherical: bool = False,
              seed: int | None = None, n_init: int | None = None) -> Any:
        """Cluster features through the ``assign_groups`` hook (the recipe's ``[grouping]``), on
        rank 0, and share the result with every rank."""
        if isinstance(features, torch.Tensor) and not bool(torch.isfinite(features).all()):
            raise RunDiverged(f"the features to cluster became non-finite at epoch {self.epoch} (step {self.step}): the "
                              "network has diverged. Lower optimizer.lr and resume from the last good checkpoint.")
        result = None
        if self.is_main:
            result = self.hook.assign_groups(features=features, n_groups=n_groups or self.n_clusters,
                                             spherical=spherical, seed=self.seed if seed is None else seed,
                                             n_init=n_init, ctx=self)
            if result is None:
                raise RuntimeError("no grouping component answered assign_groups; add a [grouping] section")
        return dist.broadcast_object(result)
