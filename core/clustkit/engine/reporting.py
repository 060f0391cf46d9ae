"""The run folder's report (``report.html`` + figures, :mod:`clustkit.report`) from a built run:
the engine's side, which knows the dataset, the network and the prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clustkit.cluster.diagnostics import subsample

if TYPE_CHECKING:
    from clustkit.engine.context import Prediction, RunContext
    from clustkit.recipe.schema import Recipe

def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable (1/0, true/false, yes/no, on/off) that, when set, overrides
    the recipe's ``default`` for every run of a session."""
    env = os.environ.get(name, "").strip().lower()
    return env not in ("0", "false", "no", "off") if env else default


def report_enabled(recipe: Recipe) -> bool:
    """``run.report``, unless ``CLUSTKIT_REPORT`` says otherwise (batch jobs that need no
    figures; the test suite, which turns it on where it checks it)."""
    return env_switch("CLUSTKIT_REPORT", recipe.run.report)


def sample_features(ctx: RunContext, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of a seeded sample of the items, their backbone features on the evaluation view):
    what the silhouette and the report's embedding read."""
    idx = subsample(len(ctx.dataset), seed=ctx.seed if seed is None else seed)
    return idx, ctx.extract(indices=idx).numpy()


def dataset_images(dataset: Any):
    """``images(indices) -> uint8 N×C×H×W``, as the report draws them."""

    def images(indices: np.ndarray) -> np.ndarray:
        return np.stack([dataset[int(i)][0].numpy() for i in indices]) if len(indices) else np.zeros((0, 1, 1, 1), np.uint8)

    return images


def write_curves(ctx: RunContext, folder: Path) -> None:
    """Refresh the loss and metric curves (each evaluation epoch; cheap)."""
    from clustkit.report import write_report

    write_report(folder, history=ctx.history, title=ctx.recipe.run_name,
                 curves_only=True, seed=ctx.seed)


def write_run_report(ctx: RunContext, folder: Path, pred: Prediction, summary: dict[str, Any],
                     features: tuple[np.ndarray, np.ndarray] | None = None,
                     diagnostics: dict[str, Any] | None = None) -> Path:
    """The full report at the end of a run: curves, cluster sizes, confusion matrix, per-cluster
    image grids and the embedding of a sample of backbone features."""
    from clustkit.report import write_report

    idx, feats = features if features is not None else sample_features(ctx)
    return write_report(
        folder, history=ctx.history, clusters=pred.labels, scores=pred.scores, labels=np.asarray(ctx.dataset.labels),
        images=dataset_images(ctx.dataset), features=feats, feature_index=idx, n_clusters=ctx.n_clusters,
        title=summary.get("method", ""), summary=summary, diagnostics=diagnostics, seed=ctx.seed,
        embedding=ctx.recipe.run.report_embedding)
