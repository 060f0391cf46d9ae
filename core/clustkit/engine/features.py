"""Features of a whole dataset on the evaluation view, split over the ranks of a multi-process run.

What evaluators, per-epoch clustering, second stages, the candidates, the report and ``clustkit
predict`` read (through ``RunContext.extract`` and friends). A rank's slice of the items is made
of whole evaluation batches (single items when there are fewer batches than ranks), so each rank
runs exactly the batches one process would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustkit import dist

if TYPE_CHECKING:
    from clustkit.engine.batches import BatchSource
    from clustkit.engine.state import RunState


def extract_spaces(run: RunState, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                   source: BatchSource | None = None) -> dict[str, torch.Tensor]:
    """``{space: features}`` of every item (or of ``indices``, in that order) of ``[data]`` (or of
    ``source``), on every rank: each rank computes its shard, then the shards are all-gathered."""
    feats, _ = extract_spaces_shard(run, spaces, momentum=momentum, indices=indices, source=source)
    if dist.world_size() == 1:
        return feats
    src = source or run.sources["data"]
    sizes = [len(r) for r in _item_shards(_n_items(src, indices), src.eval_batch_size, dist.world_size())]
    return {s: dist.all_gather_rows(t, sizes) for s, t in feats.items()}


def extract_spaces_shard(run: RunState, spaces: list[str], *, momentum: bool = False, indices: Any = None,
                         source: BatchSource | None = None) -> tuple[dict[str, torch.Tensor], range]:
    """This rank's slice only: ``({space: features}, rows)``, ``rows`` its positions in the item
    order. Unreadable items keep their blank rows; afterwards every rank knows every rank's
    unreadable items (``source.unreadable``), as when each rank read them all."""
    src = source or run.sources["data"]
    world = dist.world_size()
    if world == 1:
        return forward(run, spaces, momentum, indices, src), range(_n_items(src, indices))
    order = np.arange(src.n) if indices is None else np.asarray(indices)
    rows = _item_shards(len(order), src.eval_batch_size, world)[dist.rank()]
    # fewer items than ranks: every rank runs them all (a handful) and keeps its slice
    local = order if len(order) < world else order[rows.start:rows.stop]
    failure: BaseException | None = None
    feats: dict[str, torch.Tensor] = {}
    try:
        feats = forward(run, spaces, momentum, local, src)
    except Exception as err:  # the other ranks must hear of it, not wait for this one
        failure = err
    _share_unreadable(src, failure)
    if len(order) < world:
        feats = {s: t[rows.start:rows.stop] for s, t in feats.items()}
    return feats, rows


@torch.no_grad()
def forward(run: RunState, spaces: list[str], momentum: bool, indices: Any,
            source: BatchSource) -> dict[str, torch.Tensor]:
    """The network on the evaluation view of ``indices`` (None: every item), in order, on the CPU."""
    ctx = run.ctx
    net = ctx.momentum_model if momentum else ctx.model
    was_training = net.training
    net.eval()
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in spaces}
    try:
        for x, _, _ in source.eval_batches(indices):
            view = ctx.make_views(x, train=False)["eval"]
            with ctx.autocast():
                f = net.features(view)
                for s in spaces:
                    parts[s].append((f if s == "backbone" else net.head(f, s)).float().cpu())
    finally:
        net.train(was_training)
    return {s: torch.cat(p) for s, p in parts.items()}


def _share_unreadable(source: BatchSource, failure: BaseException | None) -> None:
    """After a sharded pass: every rank's unreadable items are noted on every rank (reported, and
    the run stopped past ``run.max_unreadable``), then a rank's failure stops every rank."""
    seen = dist.all_gather_object((sorted(source.unreadable), failure is not None))
    others = sorted({i for part, _ in seen for i in part} - set(source.unreadable))
    if others:
        source.note_unreadable(others)
    if failure is not None:
        raise failure
    failed = [r for r, (_, f) in enumerate(seen) if f]
    if failed:
        raise RuntimeError(f"rank(s) {failed} failed while extracting features (their error is above)")


def _n_items(source: BatchSource, indices: Any) -> int:
    return source.n if indices is None else len(np.asarray(indices))


def _item_shards(n: int, batch: int, world: int) -> list[range]:
    """The contiguous items each rank extracts: whole evaluation batches of ``batch`` items, so
    each rank's batches are those of one process, or single items with fewer batches than ranks."""
    align = batch if -(-n // batch) >= world else 1
    return [dist.shard_range(n, align=align, world=world, of_rank=r) for r in range(world)]
