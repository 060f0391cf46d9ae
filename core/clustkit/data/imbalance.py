"""Long-tailed versions of any labelled dataset (``data.imbalance``), deterministic from a seed.

Real collections are uneven; the clustering benchmarks are balanced. ``imbalance = {ratio = 10}``
keeps every item of the largest class and 1/ratio of the smallest, the classes in between on an
``"exponential"`` profile (class c of C keeps ``n_max · ratio^(-c/(C-1))``, the CIFAR-10-LT
construction) or a ``"step"`` one (the first half of the classes keep ``n_max``, the rest
``n_max / ratio``), each capped at what the class has. Which items a class keeps is a seeded
random choice, so MNIST-LT, USPS-LT and CIFAR-10-LT exist without new files and are the same
on every machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import ClusterDataset, DatasetError, InMemoryDataset

PROFILES = ("exponential", "step")


def long_tail_counts(counts: np.ndarray, ratio: float, profile: str) -> np.ndarray:
    """How many items each class keeps (classes in label order, the first the largest)."""
    if profile not in PROFILES:
        raise DatasetError(f"data.imbalance.profile: {profile!r} is not one of {', '.join(PROFILES)}.")
    n_max = int(counts.max())
    c = len(counts)
    if profile == "exponential":
        wanted = [n_max * ratio ** (-i / max(1, c - 1)) for i in range(c)]
    else:
        wanted = [n_max if i < c / 2 else n_max / ratio for i in range(c)]
    return np.minimum(counts, np.maximum(1, np.floor(np.asarray(wanted) + 1e-9))).astype(np.int64)


def long_tail_indices(labels: np.ndarray, ratio: float, profile: str = "exponential", seed: int = 0) -> np.ndarray:
    """The sorted indices of the items a long-tailed subsample keeps."""
    labels = np.asarray(labels)
    keep = long_tail_counts(np.bincount(labels), ratio, profile)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == k))[:n] for k, n in enumerate(keep)]
    return np.sort(np.concatenate(chosen))


class SubsetDataset(ClusterDataset):
    """Items ``indices`` of a dataset read from disk, renumbered 0..n-1."""

    def __init__(self, base: ClusterDataset, indices: np.ndarray, name: str):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.paths = [base.paths[i] for i in self.indices] if hasattr(base, "paths") else []
        self._init_meta(name=name, labels=base.labels[self.indices], channels=base.channels,
                        image_size=base.image_size, class_names=base.class_names, num_classes=base.num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label, _ = self.base[int(self.indices[int(index)])]
        return image, label, int(index)

    def describe_unreadable(self, index: int) -> str:
        describe = getattr(self.base, "describe_unreadable", None)
        i = int(self.indices[int(index)])
        return describe(i) if describe else f"item {index} could not be read"


def long_tailed(ds: ClusterDataset, options: dict[str, Any]) -> ClusterDataset:
    """``ds`` subsampled to a long tail (``options``: ratio, profile, seed); named ``<name>-lt<ratio>``."""
    if not ds.has_labels or (ds.labels < 0).any():
        raise DatasetError(f"data.imbalance: dataset '{ds.name}' has unlabelled items; a long-tailed profile is "
                           "drawn per class, so it needs every item's label.")
    ratio = float(options.get("ratio", 10))
    idx = long_tail_indices(ds.labels, ratio, str(options.get("profile", "exponential")), int(options.get("seed", 0)))
    name = f"{ds.name}-lt{ratio:g}"
    if isinstance(ds, InMemoryDataset):
        unreadable = {int(j): ds.unreadable[int(i)] for j, i in enumerate(idx) if int(i) in ds.unreadable}
        return InMemoryDataset(ds.images[torch.from_numpy(idx)], ds.labels[idx], name=name,
                               class_names=ds.class_names, num_classes=ds.num_classes, unreadable=unreadable)
    return SubsetDataset(ds, idx, name)
