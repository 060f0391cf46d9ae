"""Dataset classes shared by every loader: one item is ``(uint8 image C×H×W, label, index)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from clustkit.errors import UserError

__all__ = [
    "UNREADABLE",
    "ClusterDataset",
    "DatasetError",
    "FolderDataset",
    "InMemoryDataset",
    "as_size",
    "resize_images",
]


#: The label ``__getitem__`` returns for an image file it cannot read (the image is blank); the
#: engine reports the file once and leaves it out of training (run.max_unreadable).
UNREADABLE = -2


class DatasetError(UserError, ValueError):
    """A dataset cannot be loaded: unknown name, missing root or files, bad option.

    The message is one paragraph naming the dataset, the path and what was expected; the CLI
    prints it and exits with code 2.
    """


def as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``224`` -> ``(224, 224)``; ``(h, w)`` stays; ``None`` stays."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        seq = list(size)
        if len(seq) == 1:
            h = w = int(seq[0])
        elif len(seq) == 2:
            h, w = int(seq[0]), int(seq[1])
        else:
            raise DatasetError(f"image_size must be an int or a pair (height, width), got {size!r}.")
    if h <= 0 or w <= 0:
        raise DatasetError(f"image_size must be positive, got {size!r}.")
    return h, w


class ClusterDataset(torch.utils.data.Dataset):
    """Item ``i`` -> ``(image: uint8 tensor C×H×W, label: int (-1 if unknown), index: int i)``.

    Attributes: ``name``, ``num_classes`` (None when unlabelled), ``channels``, ``image_size``
    ``(H, W)`` (every item has this size), ``labels`` (int64 array, -1 where unknown),
    ``class_names`` (None when unlabelled) and the property ``has_labels``.
    """

    name: str
    num_classes: int | None
    channels: int
    image_size: tuple[int, int]
    labels: np.ndarray
    class_names: list[str] | None

    def _init_meta(
        self,
        *,
        name: str,
        labels: np.ndarray | Sequence[int],
        channels: int,
        image_size: tuple[int, int],
        class_names: Sequence[str] | None,
        num_classes: int | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes is None:
                num_classes = len(class_names)
            elif num_classes != len(class_names):
                raise ValueError(f"{name}: {num_classes} classes but {len(class_names)} class names")
        if num_classes is None and (labels >= 0).any():
            num_classes = int(labels.max()) + 1
        if num_classes is not None and labels.size and labels.max() >= num_classes:
            raise ValueError(f"{name}: label {labels.max()} out of range for {num_classes} classes")
        if labels.size and labels.min() < -1:
            raise ValueError(f"{name}: labels must be >= -1")
        self.name = name
        self.labels = labels
        self.channels = int(channels)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.class_names = class_names
        self.num_classes = num_classes

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.image_size
        classes = self.num_classes if self.num_classes is not None else "unlabelled"
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
            f"shape={self.channels}x{h}x{w}, classes={classes})"
        )


class InMemoryDataset(ClusterDataset):
    """All images in one uint8 tensor ``images`` of shape N×C×H×W (the engine may read it directly)."""

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: np.ndarray | Sequence[int] | None,
        *,
        name: str,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        unreadable: dict[int, str] | None = None,
    ):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: images must be a uint8 tensor N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        n = images.shape[0]
        if labels is None:
            labels = np.full(n, -1, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"{name}: {n} images but {labels.shape[0]} labels")
        self.images = images.contiguous()
        #: index -> why the file could not be read, for images decoded from files (their rows are blank):
        #: the engine leaves them out of training as it does for a dataset read from disk.
        self.unreadable = dict(unreadable or {})
        self._init_meta(
            name=name,
            labels=labels,
            channels=images.shape[1],
            image_size=(images.shape[2], images.shape[3]),
            class_names=class_names,
            num_classes=num_classes,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        index = int(index)
        if index < 0:
            index += len(self)
        return self.images[index], UNREADABLE if index in self.unreadable else int(self.labels[index]), index

    def describe_unreadable(self, index: int) -> str:
        return self.unreadable.get(index, f"item {index} could not be read")


def _resize_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the shorter side to cover ``size`` (antialiased), then center-crop to ``size``."""
    from torchvision.transforms import v2

    h, w = size
    ih, iw = images.shape[-2:]
    if (ih, iw) == (h, w):
        return images
    # Resize(int) scales the shorter edge; choosing max(h, w) guarantees the crop fits.
    images = v2.functional.resize(images, [max(h, w)], antialias=True)
    return v2.functional.center_crop(images, [h, w])


def resize_images(images: torch.Tensor, size: tuple[int, int], *, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 N×C×H×W tensor (Resize shorter side then CenterCrop), chunk by chunk."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size[0], size[1]), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = _resize_crop(images[start : start + chunk], size)
    return out


class FolderDataset(ClusterDataset):
    """Images read lazily from files with PIL.

    Each image is converted to RGB (or L when ``channels == 1``), resized with torchvision
    ``v2.Resize`` (shorter side) then ``v2.CenterCrop`` to ``image_size``, returned as uint8 C×H×W.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: np.ndarray | Sequence[int] | None,
        *,
        name: str,
        image_size: int | tuple[int, int] = 224,
        channels: int = 3,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ):
        if channels not in (1, 3):
            raise DatasetError(f"{name}: channels must be 1 or 3, got {channels!r}.")
        self.paths = [str(p) for p in paths]
        if labels is None:
            labels = np.full(len(self.paths), -1, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != len(self.paths):
            raise ValueError(f"{name}: {len(self.paths)} files but {labels.shape[0]} labels")
        size = as_size(image_size)
        assert size is not None
        self._init_meta(
            name=name,
            labels=labels,
            channels=channels,
            image_size=size,
            class_names=class_names,
            num_classes=num_classes,
        )
        self._transform = None

    def _get_transform(self):
        if self._transform is None:
            from torchvision.transforms import v2

            h, w = self.image_size
            self._transform = v2.Compose([v2.Resize(max(h, w), antialias=True), v2.CenterCrop((h, w))])
        return self._transform

    def _open(self, index: int) -> str | BinaryIO:
        """What PIL opens for item ``index``: its file (a subclass may hand over bytes from an archive)."""
        return self.paths[index]

    def load_image(self, index: int) -> torch.Tensor:
        """Item ``index`` decoded, converted and resized (a DatasetError naming the file if it cannot be read)."""
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        source = self._open(index)
        try:
            with Image.open(source) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
        except (OSError, ValueError) as exc:
            reason = str(exc) if isinstance(source, str) else str(exc).replace(f" {source!r}", "")
            raise DatasetError(f"{self.name}: cannot read image file {self.paths[index]}: {reason}") from exc
        tensor = pil_to_tensor(img)
        if tuple(tensor.shape[-2:]) != self.image_size:
            tensor = self._get_transform()(tensor)
        return tensor.contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        """The image, its label and its index; a file that cannot be read gives a blank image
        and the label ``UNREADABLE`` (one bad file must not stop a run over a large folder)."""
        index = int(index)
        if index < 0:
            index += len(self)
        try:
            image = self.load_image(index)
        except DatasetError:
            h, w = self.image_size
            return torch.zeros((self.channels, h, w), dtype=torch.uint8), UNREADABLE, index
        return image, int(self.labels[index]), index

    def describe_unreadable(self, index: int) -> str:
        """Why item ``index`` cannot be read (the path and the decoder's message)."""
        try:
            self.load_image(index)
        except DatasetError as exc:
            return str(exc)
        return f"{self.paths[index]} could not be read"

    def decoded_bytes(self) -> int:
        """Bytes the decoded uint8 images would take in memory (``data.in_memory = "auto"`` compares it)."""
        h, w = self.image_size
        return len(self) * self.channels * h * w

    def to_memory(self, num_workers: int = 0, batch_size: int = 256) -> InMemoryDataset:
        """Decode every image once, in ``num_workers`` DataLoader workers, into one :class:`InMemoryDataset`;
        an unreadable file keeps a blank row and its reason (``InMemoryDataset.unreadable``)."""
        # its own generator, so that decoding draws nothing from the run's seeded global RNG
        loader = torch.utils.data.DataLoader(self, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                             generator=torch.Generator().manual_seed(0))
        h, w = self.image_size
        images = torch.empty((len(self), self.channels, h, w), dtype=torch.uint8)
        bad: list[int] = []
        for batch, item_labels, idx in loader:
            images[idx] = batch
            bad.extend(idx[item_labels == UNREADABLE].tolist())
        return InMemoryDataset(
            images, self.labels.copy(), name=self.name, class_names=self.class_names, num_classes=self.num_classes,
            unreadable={i: self.describe_unreadable(i) for i in bad},
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_transform"] = None
        return state


def check_root(dataset: str, root: str | os.PathLike | None, expected: str) -> Path:
    """Return ``root`` as an existing path, or raise a :class:`DatasetError` naming what was expected."""
    if root is None or str(root) == "":
        raise DatasetError(
            f"dataset '{dataset}' needs a root path (the recipe's data.root), and none was "
            f"given. Expected: {expected}"
        )
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise DatasetError(
            f"dataset '{dataset}': the root {path} does not exist. Expected: {expected}"
        )
    return path
