"""A 2-D embedding of feature rows for the report's scatter plot: scikit-learn's t-SNE by default,
UMAP on request (``run.report_embedding = "umap"``; it keeps more global structure).

t-SNE is the default because of what each costs in the fresh process of a run: on the report's
2,000 rows t-SNE takes about 3 s on one thread (about half on two), UMAP about 7 s plus 2 s of
import, most of it numba compiling umap-learn's functions (they are not cached between processes). On a 2-minute digits
run that is the difference between a map that costs 3 s and one that costs 9 s.

Rows are L2-normalised first: clustering features are compared by cosine, and on unit vectors the
Euclidean distance both methods use orders neighbours the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from clustkit.cluster.manifold import embed
from clustkit.cluster.rows import unit_rows

__all__ = ["MIN_POINTS", "embed_2d"]

MIN_POINTS = 5  # below this neither method gives a meaningful picture
TSNE_ITERATIONS = 500


def _run_threads() -> int:
    """The CPU threads of the run this report belongs to: torch's setting when torch is loaded, else 1."""
    import sys

    torch = sys.modules.get("torch")
    return max(1, int(torch.get_num_threads())) if torch is not None else 1


def _prepare(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return unit_rows(x)


def embed_2d(features: np.ndarray, seed: int = 0, method: Literal["tsne", "umap"] = "tsne") -> tuple[np.ndarray, str]:
    """(n×2 coordinates, method name: "t-SNE" or "UMAP") for ``features`` (n ≥ ``MIN_POINTS``
    rows); ``method="umap"`` falls back to t-SNE when umap-learn cannot be imported."""
    n = len(features)
    if n < MIN_POINTS:
        raise ValueError(f"a 2-D embedding needs at least {MIN_POINTS} rows, got {n}")
    if method not in ("tsne", "umap"):
        raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
    x = _prepare(features)
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]  # a dependency; t-SNE if it fails to load
        except ImportError:
            umap = None
        if umap is not None:  # UMAP's defaults for a picture (min_dist 0.1), on clustkit's exact neighbours
            return embed(x, 2, 15, 0.1, "euclidean", seed), "UMAP"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # 500 iterations (250 of them early exaggeration) settle the picture at this size in half the
    # time of the default 1000. The report comes after training, so it takes the threads the run
    # was given (torch's setting: --threads, a bench's per-run threads), no more.
    threads = _run_threads()
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (n - 1) / 3),
                max_iter=TSNE_ITERATIONS, n_jobs=threads)
    with threadpool_limits(limits=threads):  # the gradient's OpenMP loop and BLAS (PCA init, neighbours)
        xy = tsne.fit_transform(x)
    return np.asarray(xy, dtype=np.float64), "t-SNE"
