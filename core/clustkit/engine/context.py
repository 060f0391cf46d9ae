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
    _grouping_shards: bool = field(default=False, init=False, repr=False)  # behind grouping_shards

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
        of ``[data]`` (or of ``source``) on the evaluation view, on the CPU, on every rank. Used by
        evaluators, per-epoch clustering, second stages, the report and ``clustkit predict``.
        In a multi-process run each rank computes its shard (:meth:`extract_shard`) and the
        shards are all-gathered: the work is split, the result the same."""
        space = "backbone" if head is None else head
        return self.extract_spaces([space], momentum=momentum, indices=indices, source=source)[space]

    def extract_shard(self, head: str | None = None, *, momentum: bool = False, indices: Any = None,
                      source: BatchSource | None = None) -> tuple[torch.Tensor, range]:
        """:meth:`extract` for this rank's contiguous slice of the items only: ``(features, rows)``,
        ``rows`` the slice's positions in the item order (every item, or ``indices``). Every rank
        must call it. On one process the slice is everything. Pass both to :meth:`group` (or
        to ``clustkit.cluster.sharded``) so no rank holds the whole feature matrix."""
        space = "backbone" if head is None else head
        feats, rows = self.extract_spaces_shard([space], momentum=momentum, indices=indices, source=source)
        return feats[space], rows

    def extract_spaces(self, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                       source: BatchSource | None = None) -> dict[str, torch.Tensor]:
        """:meth:`extract` for several spaces ("backbone" or a head's name) in one pass over the
        data: what the run's candidate clusterings and ``clustkit evaluate`` read."""
        feats, _ = self.extract_spaces_shard(spaces, momentum=momentum, indices=indices, source=source)
        if self.world_size == 1:
            return feats
        src = source or self.source
        sizes = [len(r) for r in _item_shards(_n_items(src, indices), src.eval_batch_size, self.world_size)]
        return {s: dist.all_gather_rows(t, sizes) for s, t in feats.items()}

    def extract_spaces_shard(self, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                             source: BatchSource | None = None) -> tuple[dict[str, torch.Tensor], range]:
        """:meth:`extract_shard` for several spaces in one pass: ``({space: features}, rows)``.

        A rank's slice is made of whole evaluation batches (single items when there are fewer
        batches than ranks), so each rank runs exactly the batches one process would. Unreadable
        items keep their blank rows; afterwards every rank knows every rank's unreadable items
        (``source.unreadable``), as when each rank read them all."""
        src = source or self.source
        world = self.world_size
        if world == 1:
            return self._forward(spaces, momentum, indices, src), range(_n_items(src, indices))
        order = np.arange(src.n) if indices is None else np.asarray(indices)
        rows = _item_shards(len(order), src.eval_batch_size, world)[self.rank]
        # fewer items than ranks: every rank runs them all (a handful) and keeps its slice
        local = order if len(order) < world else order[rows.start:rows.stop]
        failure: BaseException | None = None
        feats: dict[str, torch.Tensor] = {}
        try:
            feats = self._forward(spaces, momentum, local, src)
        except Exception as err:  # the other ranks must hear of it, not wait for this one
            failure = err
        self._share_unreadable(src, failure)
        if len(order) < world:
            feats = {s: t[rows.start:rows.stop] for s, t in feats.items()}
        return feats, rows

    @torch.no_grad()
    def _forward(self, spaces: list[str], momentum: bool, indices: Any, source: BatchSource) -> dict[str, torch.Tensor]:
        """The network on the evaluation view of ``indices`` (None: every item), in order, on the CPU."""
        net = self.momentum_model if momentum else self.model
        was_training = net.training
        net.eval()
        parts: dict[str, list[torch.Tensor]] = {s: [] for s in spaces}
        try:
            for x, _, _ in source.eval_batches(indices):
                view = self.hook.make_views(images=x, train=False, ctx=self)["eval"]
                with self.autocast():
                    f = net.features(view)
                    for s in spaces:
                        parts[s].append((f if s == "backbone" else net.head(f, s)).float().cpu())
        finally:
            net.train(was_training)
        return {s: torch.cat(p) for s, p in parts.items()}

    @staticmethod
    def _share_unreadable(source: BatchSource, failure: BaseException | None) -> None:
        """After a sharded pass: every rank's unreadable items are noted on every rank (reported,
        and the run stopped past ``run.max_unreadable``), then a rank's failure stops every rank."""
        seen = dist.all_gather_object((sorted(source.unreadable), failure is not None))
        others = sorted({i for part, _ in seen for i in part} - set(source.unreadable))
        if others:
            source.note_unreadable(others)
        if failure is not None:
            raise failure
        failed = [r for r, (_, f) in enumerate(seen) if f]
        if failed:
            raise RuntimeError(f"rank(s) {failed} failed while extracting features (their error is above)")

    def recipe_evaluation(self) -> Prediction:
        """The recipe's own ``[evaluation]`` on the network as it is now, whatever a later stage
        answers to the ``evaluate`` hook: how a stage re-clusters the network it has changed."""
        from clustkit.engine.build import component_callers

        pred = component_callers(self.pm, self.components, "evaluate", ["evaluation"])["evaluation"](ctx=self)
        if pred is None:
            raise RuntimeError("the recipe's [evaluation] gave no clustering")
        return pred

    def vote(self, pred: Prediction, cfg: Any, *, at_hand: dict[str, Any] | None = None,
             metric: str = "cosine") -> Prediction:
        """``pred`` after the neighbour vote its evaluator's config asks for (``cfg``: an
        ``EvaluatorConfig``; ``pred`` itself when ``cfg.vote_k`` is 0): every item takes the
        majority cluster of its ``vote_k`` nearest items in ``cfg.vote_features`` (default: the
        space ``pred`` read), ``vote_rounds`` times. The space is the momentum network's when
        ``pred`` read that network and it has the space, else the online network's. The result
        is named ``<source>+vote`` and places new images by the nearest mean of its clusters in
        that space. ``at_hand``: whole feature matrices the caller has already, by space, of the
        network ``pred`` read (the voting space is extracted when it is not among them)."""
        from clustkit.cluster.rows import cluster_means, unit_rows
        from clustkit.cluster.votes import neighbor_vote

        if not getattr(cfg, "vote_k", 0):
            return pred
        space = cfg.vote_features or pred.space
        momentum = pred.momentum and (space == "backbone" or space in self.momentum_model.heads)
        features = (at_hand or {}).get(space) if momentum == pred.momentum else None
        if features is None:
            features = self.extract(None if space == "backbone" else space, momentum=momentum)
        x = np.asarray(features, dtype=np.float32)
        before = np.asarray(pred.labels, dtype=np.int64)
        labels, share = neighbor_vote(x, before, cfg.vote_k, cfg.vote_rounds, self.n_clusters, metric)
        rows = unit_rows(x) if metric == "cosine" else x
        extra = {**pred.extra, "vote_k": cfg.vote_k, "vote_space": space, "vote_changed": int((labels != before).sum())}
        kind, _, read = pred.source.partition(":")
        if pred.momentum and not momentum and not read.startswith("momentum/"):  # named for the network it read
            read = f"momentum/{read}"
        return Prediction(labels, source=f"{kind}:{read}+vote", scores=share, space=space,
                          rule="cosine_centroid" if metric == "cosine" else "centroid", momentum=momentum,
                          centroids=cluster_means(rows, labels, self.n_clusters), extra=extra)

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

    @property
    def grouping_shards(self) -> bool:
        """True while :meth:`group` hands each rank only its shard of the rows: a grouper that
        ``accepts_shards`` must then cluster them together with the other ranks."""
        return self._grouping_shards

    def group(self, features: Any, n_groups: int | None = None, *, spherical: bool = False,
              seed: int | None = None, n_init: int | None = None, rows: range | None = None) -> Any:
        """Cluster features through the ``assign_groups`` hook (the recipe's ``[grouping]``); every
        rank gets the result, with the labels of all N rows.

        ``features`` is the whole N x D matrix, the same on every rank, or with ``rows`` this
        rank's rows of it (:meth:`extract_shard`). In a multi-process run whose groupers all
        ``accepts_shards`` (the built-in k-means does), every rank passes its shard (sliced here
        from a whole matrix) and the ranks cluster together (``sharded_kmeans``), then the labels
        are all-gathered; otherwise the shards are all-gathered, rank 0 clusters and broadcasts."""
        n_groups = n_groups or self.n_clusters
        seed = self.seed if seed is None else seed
        if self.world_size > 1 and self._groupers_accept_shards():
            if rows is None:
                mine = dist.shard_range(len(features))
                features = features[mine.start:mine.stop]
            self._check_finite(features, collective=True)
            self._grouping_shards = True
            try:
                result = self._assign_groups(features, n_groups, spherical, seed, n_init)
            finally:
                self._grouping_shards = False
            if not hasattr(result, "gathered"):
                raise TypeError(f"a grouper that accepts_shards returned {type(result).__name__}; it must return "
                                "a result whose gathered() all-gathers the labels (clustkit.cluster.sharded)")
            return result.gathered()
        if rows is not None and self.world_size > 1:
            local = torch.as_tensor(features)
            features = dist.all_gather_rows(local, dist.all_gather_sizes(len(local)))
        self._check_finite(features)
        result = None
        if self.is_main:
            result = self._assign_groups(features, n_groups, spherical, seed, n_init)
        return dist.broadcast_object(result)

    def _groupers_accept_shards(self) -> bool:
        impls = self.pm.hook.assign_groups.get_hookimpls()
        return bool(impls) and all(getattr(impl.plugin, "accepts_shards", False) for impl in impls)

    def _assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, n_init: int | None) -> Any:
        result = self.hook.assign_groups(features=features, n_groups=n_groups, spherical=spherical, seed=seed,
                                         n_init=n_init, ctx=self)
        if result is None:
            raise RuntimeError("no grouping component answered assign_groups; add a [grouping] section")
        return result

    def _check_finite(self, features: Any, collective: bool = False) -> None:
        """Stop a diverged run (non-finite features) on every rank at once."""
        bad = isinstance(features, torch.Tensor) and not bool(torch.isfinite(features).all())
        if collective:
            bad = bool(dist.all_reduce_sum(torch.tensor([float(bad)])).item())
        if bad:
            raise RunDiverged(f"the features to cluster became non-finite at epoch {self.epoch} (step {self.step}): the "
                              "network has diverged. Lower optimizer.lr and resume from the last good checkpoint.")


def _n_items(source: BatchSource, indices: Any) -> int:
    return source.n if indices is None else len(np.asarray(indices))


def _item_shards(n: int, batch: int, world: int) -> list[range]:
    """The contiguous items each rank extracts: whole evaluation batches of ``batch`` items, so
    each rank's batches are those of one process, or single items with fewer batches than ranks."""
    align = batch if -(-n // batch) >= world else 1
    return [dist.shard_range(n, align=align, world=world, of_rank=r) for r in range(world)]
