"""Exact kNN search primitives: one query block against one database, FAISS or torch.

``clustkit.cluster.neighbors`` searches a whole matrix with them and ``clustkit.cluster.sharded``
searches each rank's shard in turn and merges; both drop each query's self-match the same way.
Everything works on row blocks, so no Q x N matrix is ever materialised. torch and faiss are
imported lazily.
"""

from __future__ import annotations

import numpy as np

from clustkit.cluster.backend import faiss_flat_index

__all__ = ["drop_self", "faiss_search", "torch_search"]

_BLOCK_BYTES = 1 << 28  # ~256 MiB of distances per block in the torch fallback


def faiss_search(x: np.ndarray, q: np.ndarray, kk: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of ``q`` among ``x``: a flat L2 index, sharded over the GPUs when FAISS has several."""
    index = faiss_flat_index(x.shape[1], shard=True)
    index.add(x)
    parts = [index.search(q[s : s + chunk], kk) for s in range(0, q.shape[0], chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def torch_search(x: np.ndarray, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of ``q`` among ``x`` where FAISS is missing: ``cdist`` on query blocks of at most
    ``_BLOCK_BYTES`` of distances, then ``topk`` (squared L2, ascending)."""
    import torch

    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    block = max(1, _BLOCK_BYTES // (4 * x.shape[0]))
    dists, idxs = [], []
    for s in range(0, q.shape[0], block):
        d = torch.cdist(qt[s : s + block], xt).pow_(2)
        vals, ind = torch.topk(d, kk, dim=1, largest=False, sorted=True)
        dists.append(vals)
        idxs.append(ind)
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy()


def drop_self(dist: np.ndarray, idx: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own index (``rows``, default 0..n-1) from its k+1 results, else its
    last column.

    With duplicate points the query may tie with (and be ranked after) its copies,
    or fall out of the list entirely; both cases keep k true neighbours.
    """
    n, kk = idx.shape
    drop = idx == (np.arange(n) if rows is None else np.asarray(rows))[:, None]
    drop[~drop.any(axis=1), kk - 1] = True
    keep = ~drop
    return dist[keep].reshape(n, kk - 1), idx[keep].reshape(n, kk - 1)
