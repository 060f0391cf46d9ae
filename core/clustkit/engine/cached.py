"""A run on cached features (``[features]``): the batches and the views come from the cache.

:func:`prepare` runs before training (and before the final evaluation of a resumed run): it
extracts what the cache lacks, then puts a :class:`CachedSource` in place of the image batches of
``[data]``: its "images" are rows of cached evaluation features, which the network's
:class:`~clustkit.nn.trunk.FeatureTrunk` reads directly. :class:`FeatureViews` makes the training
views of a batch from its indices: cached augmentations, or nearest neighbours in the frozen
feature space. Losses, heads, groupers and evaluators are the same objects as on images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from clustkit.engine.batches import BatchSource
from clustkit.engine.feature_cache import FeatureCache, ensure, open_cache, view_names

if TYPE_CHECKING:
    from clustkit.engine.state import RunState


class CachedFeatures:
    """The cached evaluation features of a dataset, shaped like an in-memory dataset (what
    :class:`BatchSource` slices): ``images`` are N x D float16 rows, the labels the dataset's."""

    def __init__(self, cache: FeatureCache, dataset: Any):
        assert cache.eval is not None
        self.images = torch.from_numpy(np.array(cache.eval))  # into memory: N x D float16 is small
        self.labels = np.asarray(dataset.labels)
        self.name = getattr(dataset, "name", "data")
        self.unreadable = {i: "" for i in sorted(cache.unreadable)}
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self.labels)

    def describe_unreadable(self, i: int) -> str:
        describe = getattr(self._dataset, "describe_unreadable", None)
        return describe(i) if describe else f"item {i} could not be read when the features were extracted"


class CachedSource(BatchSource):
    """Batches of cached feature rows (float32 on the device) in the order and sharding of the
    image batches they replace."""

    @staticmethod
    def _as_input(x: torch.Tensor) -> torch.Tensor:
        return x.float()  # float16 rows on disk, float32 for the trunk


class FeatureViews:
    """The training views of a batch of cached rows, by name (the ``[views]`` generator's names).

    ``positives = "augment"``: each view a random cached round of that view of the item.
    ``positives = "neighbours"``: the first view is the item (a random cached round of it, or its
    evaluation features without rounds), every other view the same of one of its k nearest
    neighbours, drawn for each view and item (SCAN's and TEMI's positives).
    """

    def __init__(self, cache: FeatureCache, rows: torch.Tensor, names: list[str], positives: str, k: int,
                 device: torch.device):
        self.cache = cache
        self.names = names
        self.positives = positives
        self.device = device
        self.rounds = 0 if cache.aug is None else int(cache.aug.shape[0])
        self.eval = rows  # the evaluation features, in memory (N x D float16)
        self.neighbours: torch.Tensor | None = None
        if positives == "neighbours":
            self.neighbours = nearest(self.eval, k)

    def _rows(self, view: int, items: torch.Tensor) -> torch.Tensor:
        """Features of ``items`` (CPU indices) for view number ``view``: a random cached round, or
        the evaluation features."""
        if self.cache.aug is None:
            rows = self.eval[items]
        else:
            rounds = torch.randint(self.rounds, (len(items),)).numpy()
            rows = torch.from_numpy(np.asarray(self.cache.aug[rounds, view, items.numpy()]))
        return rows.to(self.device, non_blocking=True).float()

    def __call__(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        items = index.cpu()
        views: dict[str, torch.Tensor] = {}
        for v, name in enumerate(self.names):
            if self.neighbours is not None and v > 0:
                pick = torch.randint(self.neighbours.shape[1], (len(items),))
                views[name] = self._rows(v, self.neighbours[items, pick])
            else:
                views[name] = self._rows(v, items)
        return views


def nearest(features: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of each row's k nearest other rows by cosine similarity (FAISS or torch)."""
    from clustkit.cluster.neighbors import knn

    x = F.normalize(features.float(), dim=1)
    k = min(k, len(x) - 1)
    _, idx = knn(x.numpy(), k, exclude_self=True)
    return torch.from_numpy(np.asarray(idx, dtype=np.int64))


def prepare(run: RunState) -> None:
    """Fill the cache, then train and evaluate on it: ``[data]``'s batches become cached rows, the
    training views come from :class:`FeatureViews`. Idempotent."""
    f = run.recipe.features
    if f is None or run.features is not None:
        return
    cache = ensure(run, open_cache(run))
    images = run.sources["data"]
    rows = CachedFeatures(cache, run.ctx.dataset)
    run.sources["data"] = CachedSource(rows, images.batch_size, images.eval_batch_size, images.drop_last, images.seed,
                                       images.device, 0, images.max_unreadable)
    run.features = FeatureViews(cache, rows.images, view_names(run), f.positives, f.neighbours, run.ctx.device)
    run.feature_cache = cache
