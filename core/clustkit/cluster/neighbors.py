"""Exact k-nearest neighbours and sparse kNN graphs.

Built for graph-based heads such as IcicleGCN, which need a kNN adjacency over
the whole data set (e.g. 100,000 x 512 features): everything here works on row
blocks, so no N x N matrix is ever materialised (that would be 40 GB at N=1e5).
torch and faiss are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from clustkit.cluster.backend import as_float32_array, resolve_backend
from clustkit.cluster.search import drop_self, faiss_search, torch_search

if TYPE_CHECKING:
    import torch

__all__ = ["graph_from_neighbors", "knn", "knn_graph"]

NORMALIZATIONS = ("sym", "row", "none")


def knn(
    x: Any, k: int, *, exclude_self: bool = True, backend: str = "auto", chunk: int = 16384,
    rows: np.ndarray | None = None, among: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of ``x`` (or of the rows ``rows``) among the
    rows of ``x`` (or among the rows ``among``; the indices returned are still rows of ``x``).

    Returns ``(dist, idx)``: Q x k float32 squared L2 distances (ascending) and
    Q x k int64 indices, Q = N or ``len(rows)``. ``backend`` is "auto" (faiss if importable), "faiss"
    (a flat L2 index from ``faiss_flat_index``, sharded over the GPUs when FAISS has several;
    queries in chunks of ``chunk``) or "torch" (``cdist`` on row blocks + ``topk``).
    """
    backend = resolve_backend(backend, "knn")
    xs = as_float32_array(x)
    if xs.ndim != 2:
        raise ValueError(f"x must be 2-D (N x D), got shape {xs.shape}")
    kk = k + 1 if exclude_self else k
    if not 1 <= kk <= xs.shape[0]:
        raise ValueError(f"k={k} is too large for N={xs.shape[0]} (exclude_self={exclude_self})")
    qs = xs if rows is None else np.ascontiguousarray(xs[np.asarray(rows)])
    db = xs if among is None else np.ascontiguousarray(xs[np.asarray(among)])
    if kk > len(db):
        raise ValueError(f"k={k} is too large for {len(db)} candidate neighbours (exclude_self={exclude_self})")
    dist, idx = faiss_search(db, qs, kk, chunk) if backend == "faiss" else torch_search(db, qs, kk)
    dist = np.maximum(dist, 0.0).astype(np.float32, copy=False)
    idx = idx.astype(np.int64, copy=False)
    if among is not None:
        idx = np.asarray(among, dtype=np.int64)[idx]
    return drop_self(dist, idx, rows) if exclude_self else (dist, idx)


def knn_graph(
    x: Any,
    k: int,
    *,
    symmetric: bool = True,
    self_loops: bool = True,
    normalization: str = "sym",
    backend: str = "auto",
) -> torch.Tensor:
    """Sparse (coalesced COO, float32, N x N) kNN adjacency of the rows of ``x``.

    Edges i -> j for the k nearest neighbours j of i (self excluded) with binary
    weights; ``symmetric`` takes the elementwise max A ∪ Aᵀ; ``self_loops`` adds
    the identity. Then ``normalization``: "sym" = D^-1/2 A D^-1/2, "row" = D^-1 A,
    "none". D is the row degree (out-degree if not symmetric).

    IcicleGCN's paper normalises symmetrically ("sym") while its released code
    row-normalises ("row"); both are offered. The paper weights edges with a
    heat kernel exp(-|xi - xj|^2 / t), which is monotone in Euclidean distance,
    so selecting neighbours by Euclidean distance picks the same kNN set.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_normalization(normalization)
    _, idx = knn(x, k, exclude_self=True, backend=backend)
    return graph_from_neighbors(idx, symmetric=symmetric, self_loops=self_loops, normalization=normalization)


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def graph_from_neighbors(
    idx: np.ndarray, *, symmetric: bool = True, self_loops: bool = True, normalization: str = "sym"
) -> torch.Tensor:
    """The adjacency of :func:`knn_graph` from precomputed neighbours: ``idx`` (N x k) lists
    row i's k nearest neighbours (self excluded, as ``knn`` returns them).

    What lets a multi-process run build the graph from all-gathered N x k indices
    (``clustkit.cluster.sharded``) instead of gathering the features to search them.
    """
    import torch

    _check_normalization(normalization)
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"idx must be N x k, got shape {idx.shape}")
    n, k = idx.shape
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.from_numpy(idx).reshape(-1)
    if symmetric:
        rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])
    if self_loops:
        diag = torch.arange(n)
        rows, cols = torch.cat([rows, diag]), torch.cat([cols, diag])
    adj = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(rows.numel()), (n, n), check_invariants=False
    ).coalesce()
    # coalesce sums duplicate edges (i->j and j->i); clamping gives the binary union
    return _normalize(adj.indices(), adj.values().clamp_(max=1.0), n, normalization)


def _normalize(indices: torch.Tensor, values: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Degree-normalise a binary adjacency given by coalesced COO indices/values."""
    import torch

    rows, cols = indices
    deg = torch.zeros(n).index_add_(0, rows, values)
    if mode == "sym":
        inv_sqrt = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        values = values * inv_sqrt[rows] * inv_sqrt[cols]
    elif mode == "row":
        values = values / deg[rows]
    return torch.sparse_coo_tensor(
        indices, values.float(), (n, n), is_coalesced=True, check_invariants=False
    )
