"""What the engine owns about a built run (:class:`RunState`): the optimizer, the batches, the
components by role, the counters of its phases, the history. Components never see it; they get
the narrow :class:`~clustkit.engine.context.RunContext`, which reaches the engine's services
through it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clustkit.engine.batches import steps_per_epoch

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from clustkit.engine.batches import BatchSource
    from clustkit.engine.cached import FeatureViews
    from clustkit.engine.checkpoint import Checkpointer
    from clustkit.engine.components import RunComponents
    from clustkit.engine.context import RunContext
    from clustkit.engine.feature_cache import FeatureCache
    from clustkit.plugin_system.manager import PluginSet, RunHooks
    from clustkit.recipe.schema import Recipe


@dataclass(eq=False)
class RunState:
    """A built run: every part, and where the run stands.

    ``phase`` goes "train" (the epochs) -> "post" (after training: the ``[refine.*]`` stages) ->
    "done" (the run folder's final files written); ``current_pass`` is "unlabeled" during the
    ``[unlabeled]`` pass of an epoch. ``ctx`` is set once, right after construction.
    """

    recipe: Recipe
    plugins: PluginSet
    components: RunComponents
    hooks: RunHooks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sources: dict[str, BatchSource]   # the passes of an epoch, in order ("unlabeled" first, then "data")
    console: Console
    checkpointer: Checkpointer
    total_steps: int = 0
    phase: str = "train"
    current_pass: str = "data"
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one entry per epoch
    assignment: dict[str, Any] = field(default_factory=dict)  # how the finished run assigns new images
    wall_before: float = 0.0          # seconds spent by earlier invocations (resume)
    started: float = field(default_factory=time.perf_counter)
    features: FeatureViews | None = None  # a run on cached features: its training views (engine.cached)
    feature_cache: FeatureCache | None = None
    ctx: RunContext = field(init=False, repr=False)

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
        progress = min(1.0, self.ctx.step / self.total_steps)
        return cfg.final - (cfg.final - cfg.base) * (math.cos(math.pi * progress) + 1) / 2

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self)
