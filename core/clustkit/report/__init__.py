"""A human-readable report for a run folder: ``report.html`` plus PNGs under ``report/``.

The page shows the training curves, the label-free cluster diagnostics
(:func:`clustkit.cluster.diagnostics.cluster_diagnostics`), cluster sizes, a confusion matrix
against the labels (when there are labels), a grid of each cluster's most and least confident
members, and a 2-D embedding of the features. ``curves_only=True`` redraws just the curves and the
page, cheap enough to run at every periodic evaluation. See docs/report.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clustkit.atomic import atomic_write
from clustkit.cluster.diagnostics import cluster_diagnostics, subsample

__all__ = ["write_report"]

HTML_NAME = "report.html"
FIGURE_DIR = "report"
META_NAME = "figures.json"  # captions + diagnostics of the last full report, for curves-only redraws
CURVES = ("losses", "metrics")
FULL = ("cluster_sizes", "confusion", "clusters", "embedding")
ORDER = CURVES + FULL


def _int_vector(a: Any) -> np.ndarray:
    v = np.asarray(a).reshape(-1)
    if v.size and not np.issubdtype(v.dtype, np.integer):
        v = np.rint(v.astype(np.float64))
    return v.astype(np.int64, copy=False)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def write_report(folder: Path, *, history: list[dict], clusters: np.ndarray | None = None,
                 scores: np.ndarray | None = None, labels: np.ndarray | None = None,
                 images: Callable[[np.ndarray], np.ndarray] | None = None, features: np.ndarray | None = None,
                 feature_index: np.ndarray | None = None, n_clusters: int | None = None, title: str = "",
                 summary: dict | None = None, diagnostics: dict[str, Any] | None = None,
                 curves_only: bool = False, seed: int = 0,
                 embedding: Literal["tsne", "umap"] = "tsne") -> Path:
    """Write ``folder/report.html`` and its PNGs (every file atomically); return the HTML's path.

    ``history`` is the run's metrics.jsonl entries. ``clusters`` (one id per dataset item, -1 for
    none), ``scores`` (per-item confidence, or N×K probabilities), ``labels`` (-1 for unlabelled),
    ``images(indices) -> uint8 N×C×H×W`` and ``features`` (rows for the dataset items
    ``feature_index``, default ``0..len-1``) each enable the figures that need them; a figure
    without its inputs is left out. ``diagnostics`` are :func:`cluster_diagnostics` of these
    inputs when the caller has them already (a run's summary); otherwise they are computed here.
    With ``curves_only`` only the loss / metric curves and the page are rewritten; the page still
    shows the other figures a previous full report left. ``embedding``: the 2-D map's method
    (:func:`clustkit.report.embedding.embed_2d`).
    """
    from clustkit.report import plots
    from clustkit.report.embedding import MIN_POINTS, embed_2d
    from clustkit.report.page import render

    folder = Path(folder)
    figdir = folder / FIGURE_DIR
    meta_path = figdir / META_NAME
    history = [e for e in (history or []) if isinstance(e, dict)]
    captions: dict[str, str | None] = {
        "losses": plots.plot_losses(history, figdir / "losses.png"),
        "metrics": plots.plot_metrics(history, figdir / "metrics.png"),
    }

    c = _int_vector(clusters) if clusters is not None else None
    k = int(n_clusters) if n_clusters else 0
    if c is not None and c.size:
        k = max(k, int(c.max()) + 1)
    k = max(k, 1)
    assigned = c[c >= 0] if c is not None else None

    fi = None
    if features is not None:
        fi = (np.arange(len(features)) if feature_index is None else _int_vector(feature_index))
        if len(fi) != len(features):
            raise ValueError(f"feature_index has {len(fi)} entries for {len(features)} feature rows")
        if c is not None and fi.size and (fi.min() < 0 or fi.max() >= c.size):
            raise ValueError(f"feature_index must lie in [0, {c.size}) (the clustered items)")

    if curves_only:
        meta = _read_meta(meta_path)
        old = meta.get("figures") or {}
        captions.update({name: old.get(name) for name in FULL})
        if diagnostics is None and c is not None:
            diagnostics = cluster_diagnostics(c, k)
        if diagnostics is None and isinstance(meta.get("diagnostics"), dict):
            diagnostics = meta["diagnostics"]
    else:
        if diagnostics is None and c is not None:
            diagnostics = cluster_diagnostics(c, k, features, feature_index=fi, seed=seed)
        y = _int_vector(labels) if labels is not None else None
        if y is not None and c is not None and y.size != c.size:
            raise ValueError(f"labels has {y.size} entries but clusters has {c.size}")
        if c is not None:
            captions["cluster_sizes"] = plots.plot_cluster_sizes(assigned, k, figdir / "cluster_sizes.png", y)
            if y is not None and (y >= 0).any():
                both = c >= 0
                captions["confusion"] = plots.plot_confusion(y[both], c[both], figdir / "confusion.png")
            if images is not None:
                captions["clusters"] = plots.plot_cluster_grid(c, k, images, figdir / "clusters.png", scores=scores)
        rows_c = c[fi] if c is not None and fi is not None else None
        if features is not None and fi is not None and len(fi) >= MIN_POINTS:
            x = np.asarray(features).reshape(len(features), -1)
            keep = subsample(len(fi), seed=seed)
            xy, method = embed_2d(x[keep], seed=seed, method=embedding)
            classes = None
            if y is not None and fi.max() < y.size and (y[fi[keep]] >= 0).any():
                classes = y[fi[keep]]
            captions["embedding"] = plots.plot_embedding(
                xy, None if rows_c is None else rows_c[keep], classes, method, figdir / "embedding.png")
        atomic_write(meta_path, json.dumps({"figures": {n: captions.get(n) for n in FULL},
                                            "diagnostics": diagnostics}, indent=1) + "\n")

    for name in ORDER:  # a figure this report did not draw must not survive from an older one
        if not captions.get(name):
            (figdir / f"{name}.png").unlink(missing_ok=True)
    figures = [(f"{FIGURE_DIR}/{name}.png", str(captions[name])) for name in ORDER
               if captions.get(name) and (figdir / f"{name}.png").is_file()]

    bits = [f"{len(history)} history entr{'y' if len(history) == 1 else 'ies'}"]
    if c is not None:
        bits.append(f"{c.size} items in {k} cluster ids")
    if curves_only:
        bits.append("curves updated")
    note = ", ".join(bits) + f"; written {time.strftime('%Y-%m-%d %H:%M:%S')}."
    page = render(title or folder.name, summary, diagnostics, figures, note)
    out = folder / HTML_NAME
    atomic_write(out, page)
    return out
