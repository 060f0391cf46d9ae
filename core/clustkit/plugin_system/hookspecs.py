"""Hook specifications: what pluggy does in clustkit, which is *discovery* and *notification*.

* ``register_components`` is called once per plugin on the global plugin manager: the plugin
  declares the components it provides (by import string, so listing them imports no torch).
* The lifecycle hooks are notifications of a run's progress, called on the run's own plugin
  manager, where every loaded plugin and every component of the recipe is registered: each
  implementation is called (components first, in recipe order, then the plugins' own). A
  component gets a notification by having the method; on a plugin module the function needs
  ``@hookimpl``.

The work of a run is *not* done through hooks: the engine calls each component's role method
directly, by recipe key (``clustkit.plugin_system.interfaces``). Every hook here is documented in
docs/hooks.md and has a ``test_hook_<name>`` test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from clustkit.engine.context import RunContext
    from clustkit.plugin_system.registry import Registry

PROJECT = "clustkit"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for hook implementations: ``@hookimpl`` (needed on plugin-module functions; optional on
#: component methods, which the engine finds by name).
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration (global plugin manager) -------------------------------------------------


@hookspec
def register_components(registry: Registry) -> None:
    """Declare components (datasets, backbones, heads, views, losses, groupers, evaluators,
    refiners) with ``registry.add(kind, name, factory="module:attr", config=Model, doc=...)``."""


# --- lifecycle notifications (run-scoped plugin manager) ---------------------------------


@hookspec
def on_run_start(ctx: RunContext) -> None:
    """Called once after everything is built and any checkpoint restored, before training."""


@hookspec
def on_epoch_start(ctx: RunContext) -> None:
    """Called at the start of every training epoch; ``ctx.epoch`` is the 0-based index of the epoch
    about to run: per-epoch E-steps go here."""


@hookspec
def on_epoch_end(ctx: RunContext, logs: dict[str, float]) -> None:
    """Called after every training epoch with its mean (weighted) loss terms; ``ctx.epoch`` is still
    the 0-based index of the epoch that ran. Entries added to ``logs`` are recorded as the epoch's
    ``values`` in metrics.jsonl, apart from its losses."""


@hookspec
def after_training(ctx: RunContext) -> None:
    """Called once the training loop is done, before the ``[refine.*]`` stages (not again when a
    resumed run is already past it)."""


@hookspec
def on_run_end(ctx: RunContext, summary: dict[str, Any]) -> None:
    """Called with the final summary (metrics, wall time) before it is written; may add keys."""


@hookspec
def checkpoint_state(ctx: RunContext) -> dict[str, Any] | None:
    """Return ``{key: state}`` to store in checkpoints (groups, banks, pseudo-labels, stage progress)."""


@hookspec
def load_checkpoint_state(state: dict[str, Any], ctx: RunContext) -> None:
    """Restore what ``checkpoint_state`` returned (the whole merged dict; pick your own keys)."""


#: The hooks of a run's plugin manager.
LIFECYCLE: tuple[str, ...] = ("on_run_start", "on_epoch_start", "on_epoch_end", "after_training", "on_run_end",
                              "checkpoint_state", "load_checkpoint_state")

#: Hooks of clustkit 0.1 that became component methods, and what to write instead.
REMOVED: dict[str, str] = {
    "make_views": "a view generator's make_views(images, train, ctx) method",
    "build_heads": "a component's build_heads(in_dim, ctx) method",
    "compute_loss": "a loss component's compute_loss(out, ctx) method",
    "assign_groups": "a grouper component's assign_groups(features, n_groups, spherical, seed, n_init, rows, ctx) "
                     "method",
    "update_prototypes": "a component's update_prototypes(out, ctx) method",
    "evaluate": "an evaluator component's evaluate(ctx) method, or a refiner's refine(previous, ctx)",
    "candidates": "a component's candidates(ctx) method",
}
