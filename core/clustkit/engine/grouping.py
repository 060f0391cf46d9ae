"""Clustering a feature matrix with the recipe's ``[grouping]`` component, on one or many processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from clustkit import dist
from clustkit.errors import PluginError, RunDiverged

if TYPE_CHECKING:
    from clustkit.engine.state import RunState


def group(run: RunState, features: Any, n_groups: int, *, spherical: bool, seed: int, n_init: int | None,
          rows: range | None) -> Any:
    """The grouper's result, with the labels of all N rows on every rank.

    ``features`` is the whole N x D matrix, the same on every rank, or with ``rows`` this rank's
    rows of it. In a multi-process run whose grouper ``accepts_shards`` (the built-in k-means does)
    every rank passes its shard (sliced here from a whole matrix) and the ranks cluster together,
    then the labels are all-gathered; otherwise the shards are all-gathered, rank 0 clusters and
    broadcasts."""
    grouper = run.components.grouper
    if dist.world_size() > 1 and grouper.accepts_shards:
        if rows is None:
            rows = dist.shard_range(len(features))
            features = features[rows.start:rows.stop]
        _check_finite(run, features, collective=True)
        result = grouper.call(features=features, n_groups=n_groups, spherical=spherical, seed=seed, n_init=n_init,
                              rows=rows, ctx=run.ctx)
        if not hasattr(result, "gathered"):
            raise PluginError(f"{grouper.describe()} accepts_shards but returned {type(result).__name__}; it must "
                              "return a result whose gathered() all-gathers the labels (clustkit.cluster.sharded).")
        return result.gathered()
    if rows is not None and dist.world_size() > 1:
        local = torch.as_tensor(features)
        features = dist.all_gather_rows(local, dist.all_gather_sizes(len(local)))
    _check_finite(run, features)
    result = None
    if dist.is_main():
        result = grouper.call(features=features, n_groups=n_groups, spherical=spherical, seed=seed, n_init=n_init,
                              rows=None, ctx=run.ctx)
        if result is None or not hasattr(result, "labels"):
            raise PluginError(f"{grouper.describe()} returned {type(result).__name__} from assign_groups; it must "
                              "return an object with labels and centroids: a clustkit.KMeansResult (docs/api.md).")
    return dist.broadcast_object(result)


def _check_finite(run: RunState, features: Any, collective: bool = False) -> None:
    """Stop a diverged run (non-finite features) on every rank at once."""
    bad = isinstance(features, torch.Tensor) and not bool(torch.isfinite(features).all())
    if collective:
        bad = bool(dist.all_reduce_sum(torch.tensor([float(bad)])).item())
    if bad:
        ctx = run.ctx
        raise RunDiverged(f"the features to cluster became non-finite at epoch {ctx.epoch} (step {ctx.step}): the "
                          "network has diverged. Lower optimizer.lr and resume from the last good checkpoint.")
