"""Batches of a dataset for training and evaluation, sharded over the ranks of a multi-process run."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from clustkit import dist
from clustkit.data.base import UNREADABLE
from clustkit.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (float, [0, 1], on device), labels, indices


class BatchSource:
    """Yields batches of (float images in [0, 1] on device, labels, indices), sharded by rank.

    In-memory datasets are sliced directly (no DataLoader overhead for tiny images); other
    datasets go through a DataLoader over the same index order. The order of epoch e is a
    pure function of (seed, e), so resuming at an epoch boundary replays exactly.

    An item a dataset cannot read comes back with the label ``UNREADABLE``: its path and reason
    are reported once, training batches leave it out, evaluation keeps a blank row for it (the
    engine gives it cluster -1), and more than ``max_unreadable`` of the dataset stops the run.
    """

    def __init__(self, dataset: Any, batch_size: int, eval_batch_size: int, drop_last: bool,
                 seed: int, device: torch.device, num_workers: int = 0, max_unreadable: float = 1.0):
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
        self.max_unreadable = max_unreadable
        self.unreadable: dict[int, str] = {}  # index -> why it could not be read
        # Files decoded into memory (data.in_memory) keep their unreadable ones as blank rows:
        # the per-item labels that mark them, so both paths leave them out alike.
        known_bad = getattr(dataset, "unreadable", None) if self.images is not None else None
        self.item_labels: torch.Tensor | None = None
        if known_bad:
            self.item_labels = self.labels.clone()
            self.item_labels[list(known_bad)] = UNREADABLE

    def note_unreadable(self, indices: list[int]) -> None:
        """Report each unreadable item once; stop when too large a share of the dataset is."""
        describe = getattr(self.dataset, "describe_unreadable", None)
        for i in indices:
            if i not in self.unreadable:
                self.unreadable[i] = describe(i) if describe else f"item {i} could not be read"
                print(f"warning: skipping an unreadable image: {self.unreadable[i]}", file=sys.stderr)
        if len(self.unreadable) > self.max_unreadable * self.n:
            first = next(iter(self.unreadable.values()))
            raise UserError(
                f"{len(self.unreadable)} of the {self.n} images of {getattr(self.dataset, 'name', 'the dataset')} "
                f"are unreadable, more than run.max_unreadable = {self.max_unreadable:g} of them (the first: {first}). "
                f"Repair or remove those files, or raise run.max_unreadable to skip them.")

    def _batch(self, imgs: torch.Tensor, item_labels: torch.Tensor, idx: torch.Tensor, train: bool) -> Batch | None:
        """Move one batch to the device, leaving unreadable items out of training batches."""
        bad = item_labels == UNREADABLE
        if bool(bad.any()):  # a CPU tensor: no device sync
            self.note_unreadable(idx[bad].tolist())
            if train:
                imgs, idx = imgs[~bad], idx[~bad]
                if len(idx) < 2:
                    return None
        return self._to_device(imgs, idx)

    def _to_device(self, imgs: torch.Tensor, idx: torch.Tensor) -> Batch:
        """uint8 crosses to the device once (from pinned memory on CUDA, so the copy does not block
        the host); the float conversion happens there."""
        if self.device.type == "cuda" and not imgs.is_pinned():
            imgs = imgs.pin_memory()
        x = self._as_input(imgs.to(self.device, non_blocking=True))
        return x, self.labels[idx].to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)

    @staticmethod
    def _as_input(x: torch.Tensor) -> torch.Tensor:
        """What the network reads of a stored batch: uint8 images become floats in [0, 1]."""
        return x.float().div_(255.0)

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def _fetch(self, idx: torch.Tensor, train: bool) -> Batch | None:
        if self.images is not None:
            if self.item_labels is not None:
                return self._batch(self.images[idx], self.item_labels[idx], idx, train)
            return self._to_device(self.images[idx], idx)
        items = [self.dataset[int(i)] for i in idx]
        imgs = torch.stack([it[0] for it in items])
        return self._batch(imgs, torch.tensor([it[1] for it in items], dtype=torch.long), idx, train)

    def _iterate(self, order: torch.Tensor, batch: int, shard: bool) -> Iterator[Batch]:
        world, rank = dist.world_size(), dist.rank()
        chunks = list(order.split(batch))
        if shard and self.drop_last and chunks and len(chunks[-1]) < batch:
            chunks.pop()
        if self.images is None and self.num_workers > 0:
            yield from self._loader_iterate(chunks, world if shard else 1, rank if shard else 0, shard)
            return
        for chunk in chunks:
            if shard and world > 1:
                chunk = chunk.tensor_split(world)[rank]
            if (b := self._fetch(chunk, shard)) is not None:
                yield b

    def _loader_iterate(self, chunks: list[torch.Tensor], world: int, rank: int, train: bool) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        batches = [c.tensor_split(world)[rank].tolist() for c in chunks]
        # Its own generator: a DataLoader seeds its workers with a draw from the global RNG otherwise,
        # which would shift the views' random stream (a run read from disk must equal one from memory).
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            generator=torch.Generator().manual_seed(self.seed))
        for imgs, item_labels, idx in loader:
            if (b := self._batch(imgs, item_labels, idx, train)) is not None:
                yield b

    def train_batches(self, epoch: int, indices: Any = None) -> Iterator[Batch]:
        """Shuffled training batches of every item (or of ``indices``: a refinement stage's
        selection, in batches of at most its size), in an order that is a pure function of
        (seed, ``epoch``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if indices is None:
            return self._iterate(torch.randperm(self.n, generator=g), self.batch_size, shard=True)
        subset = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        world = dist.world_size()
        batch = max(world, min(self.batch_size, len(subset) // world * world))
        return self._iterate(subset[torch.randperm(len(subset), generator=g)], batch, shard=True)

    def eval_batches(self, indices: Any = None) -> Iterator[Batch]:
        """Every item (or ``indices``) in order, unshuffled and unsharded; unreadable images stay
        in as blank ones, so results keep one row per item."""
        order = torch.arange(self.n) if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self._iterate(order, self.eval_batch_size, shard=False)


def steps_per_epoch(sources: Mapping[str, BatchSource]) -> int:
    """Optimizer steps in one epoch: one per batch of every pass ([unlabeled] if any, then [data])."""
    return sum(s.steps_per_epoch() for s in sources.values())
