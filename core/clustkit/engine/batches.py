"""Batches of a dataset for training and evaluation, sharded over the ranks of a multi-process run."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from clustkit import dist

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (float, [0, 1], on device), labels, indices


class BatchSource:
    """Yields batches of (float images in [0, 1] on device, labels, indices), sharded by rank.

    In-memory datasets are sliced directly (no DataLoader overhead for tiny images); other
    datasets go through a DataLoader over the same index order. The order of epoch e is a
    pure function of (seed, e), so resuming at an epoch boundary replays exactly.
    """

    def __init__(self, dataset: Any, batch_size: int, eval_batch_size: int, drop_last: bool,
                 seed: int, device: torch.device, num_workers: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.n = len(dataset)
        self.images: torch.Tensor | None = getattr(dataset, "images", None)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def _fetch(self, idx: torch.Tensor) -> Batch:
        if self.images is not None:
            imgs = self.images[idx]
        else:
            imgs = torch.stack([self.dataset[int(i)][0] for i in idx])
        x = imgs.to(self.device, non_blocking=True).float().div_(255.0)
        return x, self.labels[idx].to(self.device), idx.to(self.device)

    def _iterate(self, order: torch.Tensor, batch: int, shard: bool) -> Iterator[Batch]:
        world, rank = dist.world_size(), dist.rank()
        chunks = list(order.split(batch))
        if shard and self.drop_last and chunks and len(chunks[-1]) < batch:
            chunks.pop()
        if self.images is None and self.num_workers > 0:
            yield from self._loader_iterate(chunks, world if shard else 1, rank if shard else 0)
            return
        for chunk in chunks:
            if shard and world > 1:
                chunk = chunk.tensor_split(world)[rank]
            yield self._fetch(chunk)

    def _loader_iterate(self, chunks: list[torch.Tensor], world: int, rank: int) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        batches = [c.tensor_split(world)[rank].tolist() for c in chunks]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for imgs, labels, idx in loader:
            yield (imgs.to(self.device, non_blocking=True).float().div_(255.0), labels.to(self.device),
                   idx.to(self.device))

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self._iterate(torch.randperm(self.n, generator=g), self.batch_size, shard=True)

    def eval_batches(self) -> Iterator[Batch]:
        return self._iterate(torch.arange(self.n), self.eval_batch_size, shard=False)


def steps_per_epoch(sources: Mapping[str, BatchSource]) -> int:
    """Optimizer steps in one epoch: one per batch of every pass ([unlabeled] if any, then [data])."""
    return sum(s.steps_per_epoch() for s in sources.values())
