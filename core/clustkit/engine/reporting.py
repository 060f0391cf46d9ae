"""The run folder's report (``report.html`` + figures, :mod:`clustkit.report`) from a built run:
the engine's side, which knows the dataset, the network and the prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clustkit.cluster.prediction import Prediction
    from clustkit.engine.state import RunState
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


def dataset_images(dataset: Any):
    """``images(indices) -> uint8 N×C×H×W``, as the report draws them."""

    def images(indices: np.ndarray) -> np.ndarray:
        return (np.stack([dataset[int(i)][0].numpy() for i in indices]) if len(indices)
                else np.zeros((0, 1, 1, 1), np.uint8))

    return images


def write_curves(run: RunState, folder: Path) -> None:
    """Refresh the loss and metric curves (each evaluation epoch; cheap)."""
    from clustkit.report import write_report

    write_report(folder, history=run.history, title=run.recipe.run_name, curves_only=True, seed=run.ctx.seed)


def write_run_report(run: RunState, folder: Path, pred: Prediction, summary: dict[str, Any],
                     features: tuple[np.ndarray, np.ndarray], diagnostics: dict[str, Any] | None = None) -> Path:
    """The full report at the end of a run: curves, cluster sizes, confusion matrix, per-cluster
    image grids and the embedding of ``features``, a sample of backbone features (indices, rows)."""
    from clustkit.report import write_report

    ctx = run.ctx
    idx, feats = features
    return write_report(
        folder, history=run.history, clusters=pred.labels, scores=pred.scores, labels=np.asarray(ctx.dataset.labels),
        images=dataset_images(ctx.dataset), features=feats, feature_index=idx, n_clusters=ctx.n_clusters,
        title=summary.get("method", ""), summary=summary, diagnostics=diagnostics, seed=ctx.seed,
        embedding=ctx.recipe.run.report_embedding)
