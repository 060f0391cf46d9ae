"""The report's figures, drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``).

No pyplot: nothing global is touched, no display is ever needed, and a figure is freed as soon as
it goes out of scope. Each ``plot_*`` function writes one PNG atomically and returns a one-line
caption, or ``None`` when there is nothing to draw (then no file is written).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clustkit.atomic import atomic_write
from clustkit.cluster.metrics import METRIC_KEYS

__all__ = [
    "plot_cluster_grid",
    "plot_cluster_sizes",
    "plot_confusion",
    "plot_embedding",
    "plot_losses",
    "plot_metrics",
    "save",
]

MAX_GRID_CLUSTERS = 20
PER_SIDE = 8  # most / least confident members shown per cluster
MAX_CONFUSION_COLUMNS = 60


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG atomically (a browser never sees half a file), then free it."""
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    fig.clear()


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _by_epoch(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per epoch (the last logged wins, so the final entry replaces a same-epoch one), sorted."""
    last: dict[float, dict[str, Any]] = {}
    for e in history:
        ep = _number(e.get("epoch"))
        if ep is not None:
            last[ep] = e
    return [last[k] for k in sorted(last)]


def plot_losses(history: list[dict[str, Any]], path: Path) -> str | None:
    """One line per loss term against the epoch, and the learning rate below it when logged."""
    entries = _by_epoch(history)
    series: dict[str, tuple[list[float], list[float]]] = {}
    lr: tuple[list[float], list[float]] = ([], [])
    for e in entries:
        for name, v in (e.get("losses") or {}).items():
            f = _number(v)
            if f is not None:
                xs, ys = series.setdefault(str(name), ([], []))
                xs.append(float(e["epoch"]))
                ys.append(f)
        f = _number(e.get("lr"))
        if f is not None:
            lr[0].append(float(e["epoch"]))
            lr[1].append(f)
    if not series and not lr[0]:
        return None
    rows = int(bool(series)) + int(bool(lr[0]))
    fig = _figure(7, 3.2 * rows)
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    if series:
        ax = axes[0]
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set_ylabel("loss")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title("training losses")
    if lr[0]:
        ax = axes[-1]
        ax.plot(*lr, color="tab:gray", marker="o" if len(lr[0]) < 30 else None, ms=3)
        ax.set_ylabel("learning rate")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    save(fig, path)
    what = f"{len(series)} loss term{'s' * (len(series) != 1)}" if series else "no loss terms"
    return f"Training losses per epoch ({what})" + (", learning rate below." if lr[0] else ".")


def plot_metrics(history: list[dict[str, Any]], path: Path) -> str | None:
    """ACC / NMI / ARI (and AMI) at each evaluation; ``None`` when no entry has them."""
    entries = [e for e in _by_epoch(history) if any(_number(e.get(k)) is not None for k in METRIC_KEYS)]
    if not entries:
        return None
    fig = _figure(7, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    for key in METRIC_KEYS:
        pts = [(float(e["epoch"]), _number(e.get(key))) for e in entries]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key.upper())
    final = [e for e in entries if e.get("final")]
    if final:
        ax.axvline(float(final[-1]["epoch"]), color="k", alpha=0.25, ls="--", lw=1)
    low = min([0.0] + [v for e in entries for v in (_number(e.get(k)) for k in METRIC_KEYS) if v is not None])
    ax.set_ylim(low - 0.02 if low < 0 else 0.0, 1.02)  # ARI can be negative
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.legend(fontsize=8, ncols=4)
    ax.grid(alpha=0.3)
    ax.set_title("evaluation (uses labels)")
    save(fig, path)
    return f"Clustering metrics at {len(entries)} evaluation{'s' * (len(entries) != 1)} (dashed line: final)."


def plot_cluster_sizes(clusters: np.ndarray, n_clusters: int, path: Path, labels: np.ndarray | None = None) -> str:
    """Bar chart of members per cluster id (the dashed line is the perfectly balanced size); with
    ``labels``, beside it the cluster sizes and the class sizes, each sorted largest first."""
    sizes = np.bincount(clusters, minlength=n_clusters)
    classes = np.bincount(labels[labels >= 0]) if labels is not None and (labels >= 0).any() else None
    width = min(16.0, max(5.0, 0.25 * n_clusters + 2))
    fig = _figure(width + (5.0 if classes is not None else 0.0), 3.2)
    ax = fig.add_subplot(1, 2 if classes is not None else 1, 1)
    ax.bar(np.arange(n_clusters), sizes, width=0.8, color="tab:blue")
    if clusters.size:
        ax.axhline(clusters.size / n_clusters, color="k", ls="--", lw=1, alpha=0.6)
    ax.set_xlabel("cluster")
    ax.set_ylabel("members")
    if n_clusters <= 40:
        ax.set_xticks(np.arange(n_clusters))
        ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    if classes is not None:
        side = fig.add_subplot(1, 2, 2)
        side.plot(np.sort(sizes)[::-1], "o-", ms=3, label="clusters")
        side.plot(np.sort(classes[classes > 0])[::-1], "s--", ms=3, label="classes")
        side.set_xlabel("rank (largest first)")
        side.set_ylabel("members")
        side.legend(fontsize=7)
        side.grid(alpha=0.3)
    save(fig, path)
    empty = int((sizes == 0).sum())
    text = (f"Members per cluster over {n_clusters} cluster ids ({clusters.size} items, {empty} empty); "
            "dashed line: a perfectly balanced size.")
    if classes is not None:
        text += " Right: the cluster sizes and the class sizes, each sorted largest first (uneven data shows here)."
    return text


def plot_confusion(labels: np.ndarray, clusters: np.ndarray, path: Path) -> str | None:
    """True class (rows) × cluster (columns) counts, columns reordered by the Hungarian matching."""
    from scipy.optimize import linear_sum_assignment

    keep = labels >= 0
    if not keep.any():
        return None
    y, c = labels[keep], clusters[keep]
    classes, yi = np.unique(y, return_inverse=True)
    ids, ci = np.unique(c, return_inverse=True)
    counts = np.zeros((len(classes), len(ids)), dtype=np.int64)
    np.add.at(counts, (yi, ci), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    acc = counts[rows, cols].sum() / y.size
    matched = [int(c_) for _, c_ in sorted(zip(rows, cols))]
    rest = sorted(set(range(len(ids))) - set(matched), key=lambda j: -counts[:, j].sum())
    order = matched + rest
    dropped = max(0, len(order) - MAX_CONFUSION_COLUMNS)
    order = order[:MAX_CONFUSION_COLUMNS]
    m = counts[:, order]
    nr, nc = m.shape
    fig = _figure(min(18.0, max(4.5, 0.4 * nc + 2.5)), min(16.0, max(3.5, 0.35 * nr + 2)))
    ax = fig.add_subplot(1, 1, 1)
    # Colour by the share of each true class, so small classes read as clearly as large ones.
    share = m / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if nr * nc <= 600:
        for i in range(nr):
            for j in range(nc):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(np.arange(nc), [str(int(ids[j])) for j in order], fontsize=7, rotation=90 if nc > 20 else 0)
    ax.set_yticks(np.arange(nr), [str(int(v)) for v in classes], fontsize=7)
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    ax.set_title(f"Hungarian-matched ACC {acc:.4f}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of class")
    save(fig, path)
    note = f"; {dropped} smallest unmatched clusters left out" if dropped else ""
    return (f"Confusion of true class (rows) and cluster (columns, reordered so each class's Hungarian match "
            f"lies on the diagonal) over {y.size} labelled items; counts, coloured by share of the class{note}.")


def _to_rgb_uint8(batch: np.ndarray) -> np.ndarray:
    """N×C×H×W (C = 1 or 3; also accepts N×H×W and N×H×W×C) as N×H×W×3 uint8."""
    a = np.asarray(batch)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"images() must return N×C×H×W, got shape {a.shape}")
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.shape[1] == 1:
        a = np.repeat(a, 3, axis=1)
    return a[:, :3].transpose(0, 2, 3, 1)


def _confidence(scores: np.ndarray | None, clusters: np.ndarray) -> np.ndarray | None:
    """Per-item confidence: ``scores`` itself, or its entry at the item's cluster when it is N×K."""
    if scores is None:
        return None
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2:
        s = s[np.arange(len(clusters)), np.clip(clusters, 0, s.shape[1] - 1)]
    return s.reshape(-1)


def plot_cluster_grid(clusters: np.ndarray, n_clusters: int, images: Callable[[np.ndarray], np.ndarray],
                      path: Path, scores: np.ndarray | None = None) -> str | None:
    """One row per cluster: its most confident members, a gap, then its least confident ones.
    Items with cluster id -1 (unassigned) are in no row."""
    sizes = np.bincount(clusters[clusters >= 0], minlength=n_clusters)
    nonempty = np.flatnonzero(sizes)
    if nonempty.size == 0:
        return None
    shown = nonempty
    if shown.size > MAX_GRID_CLUSTERS:
        shown = np.sort(nonempty[np.argsort(-sizes[nonempty], kind="stable")[:MAX_GRID_CLUSTERS]])
    conf = _confidence(scores, clusters)
    picks: list[tuple[np.ndarray, np.ndarray]] = []  # (most confident, least confident) per shown cluster
    for k in shown:
        members = np.flatnonzero(clusters == k)
        if conf is not None:
            members = members[np.argsort(-conf[members], kind="stable")]
        if len(members) <= 2 * PER_SIDE:
            picks.append((members[:PER_SIDE], members[PER_SIDE:]))
        else:
            picks.append((members[:PER_SIDE], members[-PER_SIDE:]))
    wanted = np.concatenate([np.concatenate(p) for p in picks]).astype(np.int64)
    tiles = _to_rgb_uint8(images(wanted))
    if len(tiles) != len(wanted):
        raise ValueError(f"images() returned {len(tiles)} images for {len(wanted)} indices")
    h, w = tiles.shape[1:3]
    pad, gap = max(1, h // 8), max(2, w // 2)
    cols = 2 * PER_SIDE
    width = cols * (w + pad) + gap + pad
    height = len(shown) * (h + pad) + pad
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    t = 0
    for r, (top, low) in enumerate(picks):
        y0 = pad + r * (h + pad)
        for j in range(len(top) + len(low)):
            x0 = pad + j * (w + pad) + (gap if j >= PER_SIDE else 0)
            canvas[y0:y0 + h, x0:x0 + w] = tiles[t]
            t += 1
    inch = 0.45 / (w + pad)  # a tile ~0.45 inch across
    fig = _figure(width * inch + 1.6, height * inch + 0.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(shown))],
                  [f"{int(k)} ({int(sizes[k])})" for k in shown], fontsize=7)
    ax.set_xticks([pad + PER_SIDE * (w + pad) / 2, pad + PER_SIDE * (w + pad) + gap + PER_SIDE * (w + pad) / 2],
                  ["most confident" if conf is not None else "first members",
                   "least confident" if conf is not None else "next members"], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel("cluster (size)")
    save(fig, path)
    which = (f"{len(shown)} of {nonempty.size} non-empty clusters shown (the largest: "
             f"{', '.join(str(int(k)) for k in shown)})" if len(shown) < nonempty.size
             else f"all {nonempty.size} non-empty clusters")
    order = ("up to 8 most confident members, then up to 8 least confident" if conf is not None
             else "the first members (no confidence scores given)")
    return f"Members of each cluster, one row per cluster: {order}; {which}."


def plot_embedding(xy: np.ndarray, colour: np.ndarray | None, classes: np.ndarray | None, method: str,
                   path: Path) -> str:
    """Scatter of a 2-D embedding coloured by cluster, and by true class beside it when labels exist."""
    panels = [("cluster", colour)] + ([("true class", classes)] if classes is not None else [])
    fig = _figure(5.2 * len(panels) + 0.5, 5)
    for i, (name, c) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if c is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, color="tab:blue", linewidths=0)
        else:
            known = c >= 0  # -1: unlabelled (or unassigned), drawn in light grey underneath
            if not known.all():
                ax.scatter(xy[~known, 0], xy[~known, 1], s=4, color="0.8", linewidths=0)
            ids = np.unique(c[known])
            top = int(ids.max(initial=0))
            cmap, vmax = ("tab10", 9) if top < 10 else ("tab20", 19) if top < 20 else ("turbo", top)
            ax.scatter(xy[known, 0], xy[known, 1], c=c[known], s=4, cmap=cmap, vmin=0, vmax=vmax, linewidths=0)
            if len(ids) <= 20:  # label each group at its median position
                for k in ids:
                    mx, my = np.median(xy[c == k], axis=0)
                    ax.text(mx, my, str(int(k)), fontsize=8, ha="center", va="center",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})
        ax.set_title(f"{method}, coloured by {name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    save(fig, path)
    by = "cluster" + (" (left) and true class (right)" if classes is not None else "")
    return f"2-D {method} embedding of {len(xy)} feature rows, coloured by {by}."
