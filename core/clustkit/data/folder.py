"""Folders of image files: ImageFolder-style class subfolders, flat unlabelled folders, ImageNet subsets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .base import DatasetError, FolderDataset, check_root

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "valid", "validation")}

IMAGENET10_WNIDS = [
    "n02056570", "n02085936", "n02128757", "n02690373", "n02692877",
    "n03095699", "n04254680", "n04285008", "n04467665", "n07747607",
]
IMAGENET_DOGS_WNIDS = [
    "n02085936", "n02086646", "n02088238", "n02091467", "n02097130",
    "n02099601", "n02101388", "n02101556", "n02102177", "n02105056",
    "n02105412", "n02105855", "n02107142", "n02110958", "n02112137",
]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _direct_images(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and is_image(p.name))


def walk_images(path: Path) -> list[Path]:
    """All images below ``path``, recursively, in sorted order (as torchvision's ImageFolder)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if is_image(f))
    return out


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """If every subfolder of ``root`` is a split name (train/test/val...), map split -> folder."""
    subs = _subdirs(root)
    if not subs or _direct_images(root):
        return None
    found: dict[str, Path] = {}
    for sub in subs:
        key = next((s for s, names in SPLIT_DIRS.items() if sub.name.lower() in names), None)
        if key is None:
            return None
        found.setdefault(key, sub)
    return found


def _classes_in(folder: Path, only: list[str] | None = None) -> dict[str, list[Path]]:
    """Class folder name -> its images (recursively); folders without images are left out."""
    dirs = _subdirs(folder) if only is None else [folder / c for c in only if (folder / c).is_dir()]
    return {d.name: imgs for d in dirs if (imgs := walk_images(d))}


def build_folder_dataset(
    dataset: str,
    root: Path,
    *,
    name: str,
    image_size,
    channels: int,
    classes: list[str] | None,
    split: str,
    descend: bool = True,
) -> FolderDataset:
    """Scan ``root`` (see :func:`load_image_folder`) and build a :class:`FolderDataset`."""
    expected = (
        "a folder of images, either in class subfolders (<root>/<class>/**/*.jpg, labelled) or all "
        "directly in the folder (unlabelled), optionally under train/ and test/ (or val/) subfolders."
    )
    if not root.is_dir():
        raise DatasetError(f"dataset '{dataset}': {root} is not a folder. Expected {expected}")
    # descend through wrapper folders (a single subfolder and no images): an extra nesting level
    # would otherwise turn the real classes into one class with every label 0
    if descend and classes is None:
        while not _direct_images(root) and len(subs := _subdirs(root)) == 1 and _split_dirs(root) is None:
            root = subs[0]
    splits = _split_dirs(root)
    if splits:
        wanted = ["train", "test"] if split == "all" else [split]
        folders = [splits[s] for s in wanted if s in splits]
        if not folders:
            raise DatasetError(
                f"dataset '{dataset}': {root} has no {split} folder "
                f"(found {', '.join(p.name for p in splits.values())})."
            )
    else:
        if split != "all":
            raise DatasetError(
                f"dataset '{dataset}': split '{split}' needs train/ and test/ (or val/) subfolders in {root}; "
                f"there are none, so use split='all'."
            )
        folders = [root]

    if classes is not None:
        classes = [str(c) for c in classes]
    per_folder = [_classes_in(f, classes) for f in folders]
    all_classes = sorted(set().union(*per_folder))
    if classes is not None:
        missing = [c for c in classes if c not in all_classes]
        if missing:
            present = sorted({d.name for f in folders for d in _subdirs(f)})
            shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
            raise DatasetError(
                f"dataset '{dataset}': the class folders {', '.join(missing)} are missing (or hold no "
                f"images) in {', '.join(str(f) for f in folders)}, which holds {len(present)} subfolders"
                + (f": {shown}." if present else ".")
            )
        all_classes = classes

    paths: list[Path] = []
    labels: list[int] = []
    if all_classes:
        for folder, found in zip(folders, per_folder):
            loose = _direct_images(folder)
            if loose and classes is None:
                warnings.warn(
                    f"{dataset}: ignoring {len(loose)} images directly in {folder}, which also has class subfolders",
                    stacklevel=3,
                )
            for k, c in enumerate(all_classes):
                imgs = found.get(c, [])
                paths.extend(imgs)
                labels.extend([k] * len(imgs))
        class_names: list[str] | None = all_classes
    else:
        for folder in folders:
            paths.extend(_direct_images(folder))
        labels = [-1] * len(paths)
        class_names = None
    if not paths:
        raise DatasetError(
            f"dataset '{dataset}': no images ({', '.join(IMG_EXTENSIONS)}) found in "
            f"{', '.join(str(f) for f in folders)}. Expected {expected}"
        )
    return FolderDataset(
        paths, labels, name=name, image_size=image_size, channels=channels, class_names=class_names
    )


def load_image_folder(root=None, *, image_size=None, split="all", channels=3, classes=None) -> FolderDataset:
    """Any folder of images, loaded lazily and resized to ``image_size`` (default 224).

    Class subfolders (``<root>/<class>/**/*.jpg``, as torchvision's ImageFolder) give labels
    (``classes`` keeps those subfolders, in that order); a flat folder of images is unlabelled
    (labels -1, ``num_classes`` None). ``train/`` and ``test/`` (or ``val/``) subfolders are splits,
    pooled by ``split="all"``. A lone wrapper subfolder is descended into.
    """
    base = check_root("image_folder", root, "a folder of images (class subfolders, or a flat folder).")
    return build_folder_dataset(
        "image_folder", base, name=f"image_folder:{base.resolve().name}", image_size=image_size or 224,
        channels=channels, classes=classes, split=split,
    )


def _imagenet_subset(dataset: str, wnids: list[str], root, image_size, split, channels) -> FolderDataset:
    expected = (
        f"the {len(wnids)} WordNet-id folders ({' '.join(wnids)}) holding images, directly in the root "
        f"or in its train/ subfolder (test: val/ or test/)."
    )
    base = check_root(dataset, root, expected)
    if split not in ("all", "train", "test"):
        raise DatasetError(f"dataset '{dataset}' has no split '{split}'. Expected one of: all, train, test.")
    # clustering protocol: the ImageNet training images of these classes ("all" = train)
    nested = SPLIT_DIRS["test"] if split == "test" else ("train",)
    candidates = ([] if split == "test" else [base]) + [base / n for n in nested]
    best: tuple[int, Path, list[str]] | None = None
    for cand in candidates:
        if not cand.is_dir():
            continue
        present = [w for w in wnids if (cand / w).is_dir()]
        if len(present) == len(wnids):
            return build_folder_dataset(
                dataset, cand, name=dataset, image_size=image_size or 224, channels=channels,
                classes=list(wnids), split="all", descend=False,
            )
        if best is None or len(present) > best[0]:
            best = (len(present), cand, [w for w in wnids if w not in present])
    if best is not None and best[0] > 0:
        raise DatasetError(
            f"dataset '{dataset}': {best[1]} lacks {len(best[2])} of the {len(wnids)} WordNet-id folders: "
            f"{' '.join(best[2])}. Expected {expected}"
        )
    looked = ", ".join(str(c) for c in candidates)
    found = [p.name for p in _subdirs(base)][:10] if base.is_dir() else []
    raise DatasetError(
        f"dataset '{dataset}': none of the WordNet-id folders found (looked in {looked}; the root holds "
        f"{', '.join(found) if found else 'no subfolders'}). Expected {expected}"
    )


def load_imagenet10(root=None, *, image_size=None, split="all", channels=3) -> FolderDataset:
    """ImageNet-10: the 10 ImageNet classes of the clustering papers (13,000 training images)."""
    return _imagenet_subset("imagenet10", IMAGENET10_WNIDS, root, image_size, split, channels)


def load_imagenet_dogs(root=None, *, image_size=None, split="all", channels=3) -> FolderDataset:
    """ImageNet-Dogs: the 15 dog breeds of the clustering papers (19,500 training images)."""
    return _imagenet_subset("imagenet_dogs", IMAGENET_DOGS_WNIDS, root, image_size, split, channels)


def load_tiny_imagenet(root=None, *, image_size=None, split="all", channels=3) -> FolderDataset:
    """Tiny-ImageNet (official layout ``train/<wnid>/images/*.JPEG``): 200 classes, 64×64.

    ``split="all"`` and ``"train"`` use the 100,000 training images (clustering protocol);
    ``"test"`` uses ``val/images`` labelled by ``val/val_annotations.txt``.
    """
    expected = (
        "the official layout train/<wnid>/images/*.JPEG (and val/images + val/val_annotations.txt for split='test')."
    )
    base = check_root("tiny_imagenet", root, expected)
    if split not in ("all", "train", "test"):
        raise DatasetError(f"dataset 'tiny_imagenet' has no split '{split}'. Expected one of: all, train, test.")
    if (base / "train").is_dir():
        train = base / "train"
    elif base.is_dir() and any(p.name.startswith("n") and p.name[1:].isdigit() for p in _subdirs(base)):
        train = base  # the root is the train folder itself
    else:
        raise DatasetError(f"dataset 'tiny_imagenet': {base / 'train'} does not exist. Expected {expected}")
    wnids = [d.name for d in _subdirs(train) if walk_images(d)]
    if not wnids:
        raise DatasetError(f"dataset 'tiny_imagenet': no class folders with images in {train}. Expected {expected}")
    size = image_size or 64
    if split in ("all", "train"):
        return build_folder_dataset(
            "tiny_imagenet", train, name="tiny_imagenet", image_size=size, channels=channels,
            classes=wnids, split="all", descend=False,
        )
    val = base / "val"
    ann = val / "val_annotations.txt"
    if not ann.is_file():
        raise DatasetError(f"dataset 'tiny_imagenet': {ann} does not exist. Expected {expected}")
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip():
            continue
        fname, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DatasetError(f"dataset 'tiny_imagenet': {ann} names the class {wnid}, absent from {train}.")
        path = val / "images" / fname
        if not path.is_file():
            raise DatasetError(f"dataset 'tiny_imagenet': {path} (listed in {ann}) does not exist.")
        paths.append(path)
        labels.append(index[wnid])
    return FolderDataset(paths, labels, name="tiny_imagenet", image_size=size, channels=channels, class_names=wnids)
