"""Hook specifications: the points where plugins plug into clustkit.

Two families, because pluggy calls *every* implementation of a hook:

* the **registration hook** ``register_components`` is called once on the global plugin
  manager; each plugin declares the components it provides (by import string, so no torch
  is imported to list them);
* the **run hooks** are called on a *run-scoped* plugin manager that holds only the
  components the recipe selected (plus global plugins that observe runs). So "every
  implementation is called" means "every selected component", which is what a recipe
  asks for. Provider hooks (one answer wanted) are ``firstresult``.

Every hook here is documented in docs/hooks.md and has a ``test_hook_<name>`` test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from clustkit.engine.context import BuildContext, RunContext
    from clustkit.engine.step import StepOutputs
    from clustkit.plugin_system.registry import Registry

PROJECT = "clustkit"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for hook implementations in plugins and components: ``@hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration (global plugin manager) -------------------------------------------------


@hookspec
def register_components(registry: Registry) -> None:
    """Declare components (datasets, backbones, heads, views, losses, groupers, evaluators,
    refiners) with ``registry.add(kind, name, factory="module:attr", config=Model, doc=...)``."""


# --- step hooks (run-scoped plugin manager) -----------------------------------------------


@hookspec(firstresult=True)
def make_views(images: Any, train: bool, ctx: RunContext) -> dict[str, Any] | None:
    """View generation: turn a float batch (B×C×H×W in [0, 1], on the run device) into named
    views. ``train=False`` asks for the deterministic evaluation view under the key ``"eval"``."""


@hookspec
def build_heads(in_dim: int, ctx: BuildContext) -> dict[str, Any] | None:
    """Projection: contribute trainable heads (``{name: nn.Module}``) that sit on the backbone
    feature of size ``in_dim``. Results of all components are merged; duplicate names are an error."""


@hookspec
def compute_loss(out: StepOutputs, ctx: RunContext) -> Any:
    """Loss: called once per step for each ``[losses.<id>]`` component (weight > 0). Return one
    scalar tensor (the engine names the term ``<id>``) or ``{part: tensor}`` (terms ``<id>_<part>``),
    unweighted: the engine multiplies by the recipe's ``weight`` and sums every term."""


@hookspec(firstresult=True)
def assign_groups(features: Any, n_groups: int, spherical: bool, seed: int, n_init: int | None,
                  ctx: RunContext) -> Any:
    """Grouping: cluster ``features`` (N×D) into ``n_groups``; return a ``KMeansResult``.
    ``n_init`` asks for that many restarts (None: the grouper's own setting). Used by evaluators
    (k-means on features) and by plugins (per-epoch pseudo-labels, initial centres)."""


@hookspec
def update_prototypes(out: StepOutputs, ctx: RunContext) -> None:
    """Prototype update: called after every optimizer step, without gradients, with the batch's
    outputs (EMA group features, memory banks, momentum prototypes)."""


@hookspec(firstresult=True)
def evaluate(ctx: RunContext) -> Any:
    """Evaluation: return a ``Prediction`` (one cluster id per dataset item, in index order)."""


@hookspec
def candidates(ctx: RunContext) -> dict[str, Any] | None:
    """Candidate clusterings: return ``{name: Prediction}`` for clusterings the run can give
    besides the engine's own (the argmax of each soft-assignment head, k-means on every feature
    space): a second stage's streams, a refiner's head. Called once at the end of a run; the
    label-free ``run.select`` chooses the run's output among all of them."""


# --- lifecycle ----------------------------------------------------------------------------


@hookspec
def on_run_start(ctx: RunContext) -> None:
    """Called once after everything is built and any checkpoint restored, before training."""


@hookspec
def on_epoch_start(ctx: RunContext) -> None:
    """Called at the start of every training epoch (``ctx.epoch``): per-epoch E-steps go here."""


@hookspec
def on_epoch_end(ctx: RunContext, logs: dict[str, float]) -> None:
    """Called after every training epoch with its mean loss terms; may add entries to ``logs``."""


@hookspec
def after_training(ctx: RunContext) -> None:
    """Called once the contrastive training loop is done: second stages (e.g. IcicleGCN's GCN)
    run here and may call ``ctx.save_checkpoint()`` so an interrupted stage resumes."""


@hookspec
def on_run_end(ctx: RunContext, summary: dict[str, Any]) -> None:
    """Called with the final summary (metrics, wall time) before it is written."""


@hookspec
def checkpoint_state(ctx: RunContext) -> dict[str, Any] | None:
    """Return ``{key: state}`` to store in checkpoints (groups, banks, pseudo-labels, stage progress)."""


@hookspec
def load_checkpoint_state(state: dict[str, Any], ctx: RunContext) -> None:
    """Restore what ``checkpoint_state`` returned (the whole merged dict; pick your own keys)."""
