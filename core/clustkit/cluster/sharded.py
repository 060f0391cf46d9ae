"""Whole-dataset clustering steps on features split over the ranks of a multi-process run.

In a ``torchrun`` run each rank extracts the features of a contiguous shard of the items
(``RunContext.extract_shard``). Gathering the whole N x D matrix on every rank to cluster it
costs every rank the memory of all of it and repeats the same work world times. Here each rank
keeps its shard:

* :func:`sharded_kmeans` exchanges O(k·D) values per step (candidate rows, per-cluster sums and
  counts) and O(world) scalars (distance totals, the farthest point); it is the very code of
  ``torch_kmeans`` with its collectives as no-ops on one process.
* :func:`sharded_knn` broadcasts one shard at a time as the database of an exact search, so no
  rank holds more than its shard and one other block.
* :func:`knn_across_ranks` splits the queries when every rank already holds all the rows
  (IcicleGCN's stage 2 trains on all of them): no feature crosses, only the N x k results.

Every function here is collective in a multi-process run: every rank must call it, in the same
order, with its own rows (shards may be unequal or empty; rank r's rows follow rank r-1's).
torch and faiss are imported lazily, as in the rest of ``clustkit.cluster``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clustkit.cluster.backend import (
    as_float32_array,
    faiss_devices,
    faiss_flat_index,
    resolve_backend,
    validate_kmeans_args,
)
from clustkit.cluster.kmeans import KMeansResult
from clustkit.cluster.lloyd import lloyd_fit, prepare_rows
from clustkit.cluster.neighbors import graph_from_neighbors, knn
from clustkit.cluster.search import drop_self, faiss_search, torch_search

if TYPE_CHECKING:
    import torch

    from clustkit.cluster.lloyd import Assign
    from clustkit.dist import RowShards

__all__ = [
    "ShardedKMeansResult",
    "knn_across_ranks",
    "sharded_kmeans",
    "sharded_knn",
    "sharded_knn_graph",
]


@dataclass
class ShardedKMeansResult(KMeansResult):
    """A k-means result whose ``labels`` cover this rank's rows only (``shards.rows`` of the
    whole matrix); ``centroids``, ``inertia``, ``n_iter`` and ``n_empty`` are global and the same
    on every rank."""

    shards: RowShards = field(kw_only=True)

    def gathered(self) -> KMeansResult:
        """The result with every rank's labels, N int64 in row order (collective): what one
        process clustering the concatenated shards returns."""
        import torch

        labels = self.shards.gather(torch.from_numpy(self.labels)).numpy()
        return KMeansResult(labels=labels, centroids=self.centroids, inertia=self.inertia,
                            backend=self.backend, n_iter=self.n_iter, n_empty=self.n_empty)


def _layout(x_local: Any) -> tuple[RowShards, int]:
    """(the shard layout, the common number of columns), from one all-gather of every rank's
    shape, so a malformed shard raises the same error on every rank instead of hanging the rest."""
    import torch

    from clustkit import dist
    from clustkit.dist import RowShards

    shape = tuple(x_local.shape)
    mine = [shape[0], shape[1], 2] if len(shape) == 2 else [0, 0, len(shape)]
    seen = dist.all_gather_values(torch.tensor(mine, dtype=torch.long)).tolist()
    if any(ndim != 2 for _, _, ndim in seen):
        raise ValueError(f"every rank's rows must be 2-D (n_r x D); shapes seen: {[s[:2] for s in seen]}")
    dims = {d for n, d, _ in seen if n}
    if len(dims) > 1:
        raise ValueError(f"the ranks' rows have different widths {sorted(dims)}")
    return RowShards(tuple(n for n, _, _ in seen), dist.rank()), (dims.pop() if dims else shape[1])


def _faiss_assign(spherical: bool, devices: Sequence[int | str]) -> Assign:
    """Nearest centre per row by a FAISS search of the centroids (flat L2, or inner product on
    unit rows), replicated over the devices; distances as the torch assignment gives them."""
    import torch

    def assign(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.empty(x.shape[0], dtype=torch.long)
        dist = torch.empty(x.shape[0], dtype=torch.float32)
        if x.shape[0]:
            index = faiss_flat_index(x.shape[1], inner_product=spherical, devices=devices, shard=False)
            index.add(as_float32_array(centers))
            d, i = index.search(x.numpy(), 1)
            labels.copy_(torch.from_numpy(i[:, 0]))
            dist.copy_(torch.from_numpy(1.0 - d[:, 0] if spherical else d[:, 0]))
        return labels, dist.clamp_(min=0.0)

    return assign


def sharded_kmeans(
    x_local: Any,
    k: int,
    *,
    spherical: bool = False,
    n_init: int = 1,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    backend: str = "torch",
    chunk: int = 65536,
    devices: Sequence[int | str] | None = None,
) -> ShardedKMeansResult:
    """k-means over the rows of every rank, each passing its contiguous shard ``x_local``.

    Greedy k-means++ seeding and Lloyd iterations as ``torch_kmeans``: every rank draws the
    same uniforms; each D²-sampling step all-gathers the ranks' distance totals and the rank
    whose interval holds the draw supplies the row; the greedy trials' summed distances, the
    per-cluster sums (float64) and counts and the inertia are all-reduced; an empty cluster is
    re-seeded at the globally farthest point. Each Lloyd step assigns the local shard with
    torch matmul blocks of ``chunk`` rows (``backend="torch"``) or a FAISS search of the
    centroids (``"faiss"``, on CPU copies of the rows; ``devices`` as ``faiss_flat_index``;
    ``"auto"``: FAISS when installed).

    On one process this is ``torch_kmeans`` exactly (backend "torch"); across ranks the
    labels are those of one process clustering the concatenated shards, the centroids equal
    to float rounding. Returns this rank's labels with the global centroids and statistics;
    ``.gathered()`` all-gathers the labels.
    """
    import torch

    backend = resolve_backend(backend)
    x = x_local if isinstance(x_local, torch.Tensor) else torch.from_numpy(np.asarray(x_local))
    rows, d = _layout(x)
    validate_kmeans_args((rows.n_total, d), k, n_init, max_iter)
    x = prepare_rows(x, spherical)
    assign, name = None, "torch"
    if backend == "faiss":
        devices = list(faiss_devices() if devices is None else devices)
        x = x.cpu()
        assign = _faiss_assign(spherical, devices)
        name = "faiss-cpu" if all(dev == "cpu" for dev in devices) else "faiss-gpu"
    fit = lloyd_fit(x, k, rows=rows, spherical=spherical, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed,
                    chunk=chunk, assign=assign)
    return ShardedKMeansResult(**vars(fit), backend=name, shards=rows)


def _merge_nearest(
    best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray, i: np.ndarray, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kk`` smallest of two ascending candidate lists per query; on equal distances the
    earlier list (earlier blocks, so lower row numbers) comes first."""
    cat_d, cat_i = np.concatenate([best_d, d], axis=1), np.concatenate([best_i, i], axis=1)
    order = np.argsort(cat_d, axis=1, kind="stable")[:, :kk]
    return np.take_along_axis(cat_d, order, axis=1), np.take_along_axis(cat_i, order, axis=1)


def _sharded_knn(
    x_local: Any, k: int, exclude_self: bool, backend: str, chunk: int
) -> tuple[np.ndarray, np.ndarray, RowShards]:
    import torch

    from clustkit import dist

    backend = resolve_backend(backend, "knn")
    xs = as_float32_array(x_local)
    rows, _ = _layout(xs)
    kk = k + 1 if exclude_self else k
    if not 1 <= kk <= rows.n_total:
        raise ValueError(f"k={k} is too large for N={rows.n_total} (exclude_self={exclude_self})")
    n = xs.shape[0]
    best_d = np.full((n, kk), np.inf, dtype=np.float32)
    best_i = np.full((n, kk), -1, dtype=np.int64)
    for _, offset, block in dist.shard_blocks(torch.from_numpy(xs), rows.sizes):
        if n:
            db, m = block.numpy(), min(kk, block.shape[0])
            d, i = faiss_search(db, xs, m, chunk) if backend == "faiss" else torch_search(db, xs, m)
            best_d, best_i = _merge_nearest(best_d, best_i, d, i.astype(np.int64) + offset, kk)
    best_d = np.maximum(best_d, 0.0).astype(np.float32, copy=False)
    if exclude_self:
        best_d, best_i = drop_self(best_d, best_i, np.arange(rows.offset, rows.offset + n))
    return best_d, best_i, rows


def sharded_knn(
    x_local: Any, k: int, *, exclude_self: bool = True, backend: str = "auto", chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of this rank's rows among the rows of every rank.

    Each rank's shard is broadcast in turn as the database of a search (``backend``: FAISS flat
    index or torch ``cdist`` blocks, as :func:`clustkit.cluster.neighbors.knn`) and the running
    top-k merged, so no rank ever holds more than its shard and one other block. Returns
    ``(dist, idx)``, n_local x k, squared L2 ascending, ``idx`` global row numbers: the rows
    ``knn`` of the concatenated shards gives for these queries (on data without distance ties).
    """
    d, i, _ = _sharded_knn(x_local, k, exclude_self, backend, chunk)
    return d, i


def sharded_knn_graph(
    x_local: Any,
    k: int,
    *,
    symmetric: bool = True,
    self_loops: bool = True,
    normalization: str = "sym",
    backend: str = "auto",
) -> torch.Tensor:
    """The N x N sparse kNN graph of ``knn_graph`` over every rank's rows, on every rank: the
    rows' neighbours from :func:`sharded_knn`, then the N x k indices (not the features)
    all-gathered."""
    import torch

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _, idx, rows = _sharded_knn(x_local, k, True, backend, 16384)
    every = rows.gather(torch.from_numpy(idx)).numpy()
    return graph_from_neighbors(every, symmetric=symmetric, self_loops=self_loops, normalization=normalization)


def knn_across_ranks(
    x: Any, k: int, *, exclude_self: bool = True, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """``knn(x, k)`` on every rank when every rank holds all of ``x`` (the same rows).

    Each rank searches its contiguous slice of the queries among all rows; the N x k distances
    and indices are then all-gathered. The search is split instead of repeated, and no feature
    crosses between ranks. One process (or fewer rows than ranks): ``knn(x, k)`` itself.
    """
    import torch

    from clustkit import dist

    world = dist.world_size()
    xs = as_float32_array(x)
    if world == 1 or xs.shape[0] < world:
        return knn(xs, k, exclude_self=exclude_self, backend=backend)
    n = xs.shape[0]
    mine = dist.shard_range(n)
    sizes = [len(dist.shard_range(n, of_rank=r)) for r in range(world)]
    d, i = knn(xs, k, exclude_self=exclude_self, backend=backend, rows=np.arange(mine.start, mine.stop))
    return (dist.all_gather_rows(torch.from_numpy(d), sizes).numpy(),
            dist.all_gather_rows(torch.from_numpy(i), sizes).numpy())
