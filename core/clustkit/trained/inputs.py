"""Image inputs of ``clustkit predict``: files and folders become one dataset at the run's size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from clustkit.data.base import FolderDataset
from clustkit.data.folder import IMG_EXTENSIONS, is_image, walk_images
from clustkit.errors import UserError


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every image file named, or found (recursively, sorted) in a folder named, in input order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(os.path.expanduser(str(item)))
        if p.is_dir():
            found = walk_images(p)
            if not found:
                raise UserError(f"{p} holds no image files (looked for {', '.join(IMG_EXTENSIONS)}, recursively).")
            paths.extend(found)
        elif p.is_file():
            if not is_image(p.name):
                raise UserError(f"{p} is not an image file (allowed extensions: {', '.join(IMG_EXTENSIONS)}).")
            paths.append(p)
        else:
            raise UserError(f"{p} does not exist; pass image files or folders of images.")
    return paths


def image_dataset(inputs: Sequence[str | os.PathLike], image_size: tuple[int, int], channels: int) -> FolderDataset:
    """The images as a dataset the run's network reads: resized (shorter side, then centre crop)
    to the run's image size and converted to its channels, as folder datasets are in training."""
    return FolderDataset(image_paths(inputs), None, name="images", image_size=image_size, channels=channels)

