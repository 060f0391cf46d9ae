"""Datasets for clustering: every item is ``(uint8 image C×H×W, label or -1, index)``.

``load_dataset(name, root=..., image_size=..., split="all", **options)`` returns a
:class:`ClusterDataset`. ``split="all"`` (default) pools train and test, as the clustering papers
do; ``"train"`` and ``"test"`` pick one. ``DATASETS`` maps each name to its loader (recipes are
validated against its keys). Importing this package imports torch and numpy only; scikit-learn,
scipy, h5py, PIL and torchvision are imported by the loaders that need them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from .arrays import load_coil20, load_digits, load_fashion_mnist, load_kmnist, load_mnist, load_stl10, load_usps
from .base import UNREADABLE, ClusterDataset, DatasetError, FolderDataset, InMemoryDataset
from .cifar import load_cifar10, load_cifar100
from .folder import load_image_folder, load_imagenet10, load_imagenet_dogs, load_tiny_imagenet
from .imbalance import long_tailed
from .memory import InMemory, place
from .shards import TarShardDataset, load_webdataset

__all__ = [
    "DATASETS",
    "SPLITS",
    "UNREADABLE",
    "ClusterDataset",
    "DatasetError",
    "FolderDataset",
    "InMemoryDataset",
    "TarShardDataset",
    "load_dataset",
]

#: name -> loader ``loader(root, *, image_size, split, **options) -> ClusterDataset``
DATASETS: dict[str, Callable[..., ClusterDataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "kmnist": load_kmnist,
    "usps": load_usps,
    "coil20": load_coil20,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "image_folder": load_image_folder,
    "imagenet10": load_imagenet10,
    "imagenet_dogs": load_imagenet_dogs,
    "tiny_imagenet": load_tiny_imagenet,
    "webdataset": load_webdataset,
}

SPLITS = ("all", "train", "test", "unlabeled")  # "unlabeled": stl10 only


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    split: str = "all",
    in_memory: InMemory | None = None,
    imbalance: dict | None = None,
    **options,
) -> ClusterDataset:
    """Load dataset ``name`` (a key of :data:`DATASETS`; ``-`` and ``_`` are interchangeable).

    ``image_size`` resizes (shorter side, then center crop): datasets of image files decode at this
    size (default 224; 64 for tiny_imagenet); in-memory datasets keep their native size when it is
    None, else are resized once. ``in_memory`` decides whether image files are decoded once into
    memory (True), read from disk when an item is asked for (False), or the first when the decoded
    images fit in a quarter of the available memory ("auto", the recipes' default); None (the
    default here) keeps what the loader returns. Any other option goes to the loader (e.g. ``channels``,
    ``superclasses``, ``unlabeled``, ``classes``, ``cache_dir``); unknown ones raise
    :class:`DatasetError`. ``imbalance`` (``{"ratio": 10, "profile": "exponential", "seed": 0}``)
    subsamples the result to a long tail (:mod:`clustkit.data.imbalance`).
    """
    key = str(name).strip().lower().replace("-", "_")
    loader = DATASETS.get(key)
    if loader is None:
        raise DatasetError(f"unknown dataset '{name}'. Known datasets: {', '.join(sorted(DATASETS))}.")
    if split not in SPLITS:
        raise DatasetError(f"dataset '{key}': unknown split '{split}'. Expected one of: {', '.join(SPLITS)}.")
    params = inspect.signature(loader).parameters
    accepted = [p for p in params if p not in ("root", "image_size", "split")]
    unknown = sorted(o for o in options if o not in accepted)
    if unknown:
        raise DatasetError(
            f"dataset '{key}': unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
            f"Accepted options: {', '.join(['root', 'image_size', 'split', *accepted])}."
        )
    if root is not None:
        root = os.path.expanduser(os.fspath(root))
    ds = loader(root, image_size=image_size, split=split, **options)
    ds = ds if in_memory is None else place(ds, in_memory, key)
    return ds if imbalance is None else long_tailed(ds, imbalance)
