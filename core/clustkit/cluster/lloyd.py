"""The shard-generic torch Lloyd loop behind ``torch_kmeans`` and ``sharded_kmeans``.

Greedy k-means++ seeding, nearest-centre assignment, empty-cluster repair, centre update and the
exact inertia, all written over a :class:`clustkit.dist.RowShards` layout: with one shard
(``torch_kmeans``) its collectives are no-ops, with several (``clustkit.cluster.sharded``) each rank
holds a contiguous shard of the rows and only O(k·D) values cross between ranks. One implementation
for both is what makes a sharded run give one process's result. torch is imported lazily.

Every helper takes the shard layout ``rows`` (None: all rows are here). Where the rows are split
over ranks, what crosses between them is O(k·D) or O(world) values per step: the k-means++
candidates and their summed distances, each rank's distance total, the per-cluster sums and
counts, the farthest point of an empty-cluster repair, the inertia.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from clustkit.dist import RowShards

    # (rows, their squared norms, centres) -> (nearest centre per row, its distance)
    Assign = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

__all__ = ["LloydFit", "kmeans_pp", "lloyd_fit", "prepare_rows"]  # and, for type hints, Assign


@dataclass
class LloydFit:
    """The kept run of :func:`lloyd_fit`: the fields of a ``KMeansResult`` but its backend name,
    which the caller knows (this loop does not)."""

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    n_iter: int
    n_empty: int


_F64_BLOCK_BYTES = 1 << 24  # float64 copies of at most ~16 MiB of rows at a time (sums across shards)


def _f64_blocks(x: torch.Tensor) -> range:
    """Starts of the row blocks in which a shard is converted to float64 for the exact sums."""
    return range(0, x.shape[0], max(1, _F64_BLOCK_BYTES // (8 * max(1, x.shape[1]))))


def _shards(rows: RowShards | None, n: int) -> RowShards:
    """The layout ``rows`` stands for: one shard of all ``n`` rows when None (no collectives)."""
    from clustkit.dist import RowShards

    return RowShards.single(n) if rows is None else rows


def prepare_rows(x: torch.Tensor, spherical: bool) -> torch.Tensor:
    """float32, contiguous rows (unit rows in spherical mode): what every torch path clusters."""
    import torch

    x = x.detach().to(torch.float32)
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    return x.contiguous()


def _dist_to(x: torch.Tensor, x_sq: torch.Tensor, p: torch.Tensor, spherical: bool) -> torch.Tensor:
    """Distance of every row of ``x`` to point(s) ``p`` (D or D x m): squared L2, or 1 - cos."""
    dot = x @ p
    if spherical:
        return 1.0 - dot
    p_sq = (p * p).sum(0)
    x_sq = x_sq if dot.dim() == 1 else x_sq[:, None]
    return (x_sq - 2.0 * dot + p_sq).clamp_(min=0.0)


def _draw_d2(cdf: torch.Tensor, u: torch.Tensor, rows: RowShards) -> tuple[list[int], torch.Tensor]:
    """D² sampling over all shards: for each uniform ``u`` the row that ``searchsorted`` would
    pick in the cdf of the concatenated shards, as (owning rank per draw, row within the owner).

    Only each rank's distance total crosses (O(world)); every rank derives the same owners from
    them, and the owner finds the row in its local cdf. ``local`` is meaningful on the owner only.
    """
    import torch

    n_local = cdf.shape[0]
    mine = float(cdf[-1].item()) if n_local else 0.0
    totals = rows.values(torch.tensor([mine], dtype=torch.float64)).flatten().tolist()
    total = sum(totals)
    if not total > 0:  # every point already coincides with a centre: uniform over all rows
        picks = [rows.locate(i) for i in (u * rows.n_total).long().clamp_(max=rows.n_total - 1).tolist()]
        return [r for r, _ in picks], torch.tensor([i for _, i in picks], dtype=torch.long, device=cdf.device)
    target = u * total
    ends: list[float] = []
    for t in totals:  # where each rank's interval of the global cdf ends, the same on every rank
        ends.append(t if not ends else ends[-1] + t)
    last = max(r for r, n in enumerate(rows.sizes) if n)
    owners = [next((r for r in range(rows.world) if rows.sizes[r] and ends[r] > t), last) for t in target.tolist()]
    if not n_local:
        return owners, torch.zeros(len(owners), dtype=torch.long, device=cdf.device)
    prefix = ends[rows.rank - 1] if rows.rank else 0.0
    return owners, torch.searchsorted(cdf, target - prefix, right=True).clamp_(max=n_local - 1)


def kmeans_pp(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    k: int,
    gen: torch.Generator,
    spherical: bool,
    rows: RowShards | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn: best of 2 + log k D^2-sampled candidates).

    1 - cos is proportional to squared L2 on unit vectors, so the spherical case
    samples with the same distribution. Every rank draws the same uniforms from ``gen``; the
    candidates' rows and their summed distances are shared, so all ranks pick the same centres.
    """
    import torch

    rows = _shards(rows, x.shape[0])
    n_trials = 2 + int(math.log(k))
    first = int(torch.randint(rows.n_total, (1,), generator=gen, device=x.device).item())
    owner, row = rows.locate(first)
    centers = x.new_empty((k, x.shape[1]))
    centers[0] = rows.share_rows(x, [owner], torch.tensor([row], device=x.device))[0]
    closest = _dist_to(x, x_sq, centers[0], spherical).clamp_(min=0.0)
    for j in range(1, k):
        cdf = torch.cumsum(closest.double(), 0)
        u = torch.rand(n_trials, generator=gen, device=x.device, dtype=torch.float64)
        owners, local = _draw_d2(cdf, u, rows)
        cand = rows.share_rows(x, owners, local)  # n_trials x D
        d_cand = _dist_to(x, x_sq, cand.T, spherical).clamp_(min=0.0)  # N x n_trials
        d_cand = torch.minimum(d_cand, closest[:, None])
        best = int(torch.argmin(rows.sum(d_cand.double().sum(0))).item())
        centers[j] = cand[best]
        closest = d_cand[:, best].contiguous()
    return centers


def _assign(
    x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, spherical: bool, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre per point, computed on N_chunk x K blocks (never N x N)."""
    import torch

    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    c_sq = (centers * centers).sum(1)
    for s in range(0, n, chunk):
        dot = x[s : s + chunk] @ centers.T
        d = 1.0 - dot if spherical else x_sq[s : s + chunk, None] - 2.0 * dot + c_sq[None]
        dist[s : s + chunk], labels[s : s + chunk] = d.min(dim=1)
    return labels, dist.clamp_(min=0.0)


def _cluster_sizes(labels: torch.Tensor, k: int, rows: RowShards) -> torch.Tensor:
    """Members of each cluster over all shards (k int64)."""
    import torch

    return rows.sum(torch.bincount(labels, minlength=k))


def _farthest(dist: torch.Tensor, rows: RowShards) -> tuple[int, int, float]:
    """The point farthest from its centre over all shards: (rank, row there, distance).

    Ties go to the lowest rank, then (``argmax``) the first row: the point one process picks.
    """
    import torch

    far, value = (int(torch.argmax(dist).item()), 0.0) if dist.numel() else (0, -math.inf)
    if dist.numel():
        value = float(dist[far].item())
    if rows.world == 1:
        return 0, far, value
    values = rows.values(torch.tensor([value], dtype=torch.float64)).flatten().tolist()
    best = max(values)
    return values.index(best), far, best


def _repair_empty(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    dist: torch.Tensor,
    spherical: bool,
    rows: RowShards | None = None,
) -> None:
    """Re-seed empty clusters in place at the points farthest from their centre.

    After each re-seed the points closer to the new centre are moved to it, so
    duplicates of a chosen point are never chosen twice. Stops early only when
    every point sits on a centre (fewer distinct points than clusters).
    """
    import torch

    rows = _shards(rows, x.shape[0])
    k = centers.shape[0]
    while True:
        empty = torch.nonzero(_cluster_sizes(labels, k, rows) == 0).flatten()
        if empty.numel() == 0:
            return
        owner, far, far_dist = _farthest(dist, rows)
        if far_dist <= 0:
            return
        c = int(empty[0].item())
        centers[c] = rows.share_rows(x, [owner], torch.tensor([far], device=x.device))[0]
        d_new = _dist_to(x, x_sq, centers[c], spherical).clamp_(min=0.0)
        held = owner == rows.rank
        if held:
            d_new[far] = 0.0  # force progress even if rounding makes d(x, x) > 0
        closer = d_new < dist
        if held:
            closer[far] = True
        labels[closer] = c
        dist[closer] = d_new[closer]


def _update_centers(
    x: torch.Tensor,
    labels: torch.Tensor,
    old: torch.Tensor,
    spherical: bool,
    rows: RowShards | None = None,
) -> torch.Tensor:
    """Cluster means (unit-normalised if spherical); a still-empty cluster keeps its centre.

    Across shards the per-cluster sums are accumulated and summed over ranks in float64, so the
    means do not depend on how the rows are split; one process keeps its float32 sums (its
    results are unchanged by sharding).
    """
    import torch

    rows = _shards(rows, x.shape[0])
    k = old.shape[0]
    if rows.world == 1:
        sums = torch.zeros_like(old).index_add_(0, labels, x)
    else:
        sums = torch.zeros(old.shape, dtype=torch.float64, device=x.device)
        blocks = _f64_blocks(x)
        for s in blocks:
            sums.index_add_(0, labels[s : s + blocks.step], x[s : s + blocks.step].double())
        rows.sum(sums)
    counts = _cluster_sizes(labels, k, rows).to(sums.dtype)[:, None]
    new = torch.where(counts > 0, sums / counts.clamp(min=1.0), old.to(sums.dtype)).to(old.dtype)
    if spherical:
        new = torch.nn.functional.normalize(new, dim=1)
    return new


def _exact_inertia_torch(
    x: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    spherical: bool,
    chunk: int,
    rows: RowShards | None = None,
) -> float:
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        xs, cs = x[s : s + chunk], centers[labels[s : s + chunk]]
        per_point = 1.0 - (xs * cs).sum(1) if spherical else ((xs - cs) ** 2).sum(1)
        total += float(per_point.double().sum().item())
    return _shards(rows, x.shape[0]).sum_float(total)


def _feature_variance(x: torch.Tensor, rows: RowShards) -> float:
    """Mean per-feature variance of all rows (the scale of ``tol``).

    One process: torch's own. Across shards: two float64 passes (the mean, then the squared
    deviations from it), each summed over ranks.
    """
    import torch

    if rows.world == 1:
        return float(x.var(0, unbiased=False).mean().item())
    blocks = _f64_blocks(x)
    acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in blocks:
        acc += x[s : s + blocks.step].double().sum(0)
    mean = rows.sum(acc) / rows.n_total
    acc = torch.zeros_like(mean)
    for s in blocks:
        acc += ((x[s : s + blocks.step].double() - mean) ** 2).sum(0)
    return float((rows.sum(acc) / rows.n_total).mean().item())


def _lloyd(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    centers: torch.Tensor,
    *,
    spherical: bool,
    max_iter: int,
    tol_abs: float,
    chunk: int,
    rows: RowShards | None = None,
    assign: Assign | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd iterations until the squared centre shift drops to ``tol_abs``.

    ``assign`` finds each row's nearest centre (default: torch matmul blocks of ``chunk`` rows).
    The centres are the same on every rank, so every rank stops at the same iteration.
    """
    rows = _shards(rows, x.shape[0])
    nearest = assign or (lambda x, x_sq, c: _assign(x, x_sq, c, spherical, chunk))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the last value is the iteration count returned below
        labels, dist = nearest(x, x_sq, centers)
        _repair_empty(x, x_sq, centers, labels, dist, spherical, rows)
        new = _update_centers(x, labels, centers, spherical, rows)
        shift = float(((new - centers) ** 2).sum().item())
        centers = new
        if shift <= tol_abs:
            break
    labels, dist = nearest(x, x_sq, centers)
    _repair_empty(x, x_sq, centers, labels, dist, spherical, rows)
    return centers, labels, n_iter


def lloyd_fit(
    x: torch.Tensor,
    k: int,
    *,
    spherical: bool,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
    chunk: int,
    rows: RowShards | None = None,
    assign: Assign | None = None,
) -> LloydFit:
    """k-means++ + Lloyd on this rank's rows ``x`` (prepared by :func:`prepare_rows`) of the matrix
    laid out by ``rows`` (None: all rows are here); best of ``n_init`` by inertia. ``labels`` are
    this shard's; centroids, inertia, n_iter and n_empty are global and identical on every rank.
    ``tol`` is relative to the mean per-feature variance (as in scikit-learn)."""
    import torch

    rows = _shards(rows, x.shape[0])
    x_sq = (x * x).sum(1)
    tol_abs = tol * _feature_variance(x, rows)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best: LloydFit | None = None
    for _ in range(n_init):
        init = kmeans_pp(x, x_sq, k, gen, spherical, rows)
        centers, labels, n_iter = _lloyd(
            x, x_sq, init, spherical=spherical, max_iter=max_iter, tol_abs=tol_abs, chunk=chunk,
            rows=rows, assign=assign,
        )
        inertia = _exact_inertia_torch(x, centers, labels, spherical, chunk, rows)
        if best is None or inertia < best.inertia:  # the same inertia on every rank: the same branch
            best = LloydFit(
                labels=labels.cpu().numpy().astype(np.int64),
                centroids=centers.cpu().numpy().astype(np.float32),
                inertia=inertia,
                n_iter=n_iter,
                n_empty=int((_cluster_sizes(labels, k, rows) == 0).sum().item()),
            )
    assert best is not None
    return best
