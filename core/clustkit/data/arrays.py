"""Small fixed-size datasets held in memory: digits, MNIST, Fashion-MNIST, USPS, COIL-20, STL-10."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError, InMemoryDataset, as_size, check_root, resize_images

# A resize requested through ``image_size`` is done once, eagerly, on the whole tensor. Past this
# many bytes it is refused: resize in the augmentation pipeline instead (e.g. CIFAR at 224×224).
MAX_RESIZED_BYTES = 4 * 1024**3


def resolve_splits(dataset: str, split: str, available: tuple[str, ...] = ("train", "test")) -> list[str]:
    """``"all"`` -> every available split (clustering protocol: train and test pooled)."""
    if split == "all":
        return list(available)
    if split in available:
        return [split]
    raise DatasetError(
        f"dataset '{dataset}' has no split '{split}'. Expected one of: all, {', '.join(available)}."
    )


def finish(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | None,
    *,
    name: str,
    class_names: list[str] | None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> InMemoryDataset:
    """Wrap a uint8 N×C×H×W array; optionally convert channels (1 <-> 3) and resize once."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if channels is not None and channels != images.shape[1]:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and images.shape[1] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            grey = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
            for s in range(0, images.shape[0], 8192):
                chunk = (images[s : s + 8192].float() * weights).sum(1, keepdim=True)
                grey[s : s + 8192] = chunk.round_().clamp_(0, 255).to(torch.uint8)
            images = grey
        else:
            raise DatasetError(f"dataset '{name}': channels must be 1 or 3, got {channels!r}.")
    size = as_size(image_size)
    if size is not None and tuple(images.shape[-2:]) != size:
        nbytes = images.shape[0] * images.shape[1] * size[0] * size[1]
        if nbytes > MAX_RESIZED_BYTES:
            raise DatasetError(
                f"dataset '{name}': resizing {images.shape[0]} images from "
                f"{images.shape[2]}x{images.shape[3]} to {size[0]}x{size[1]} in memory would take "
                f"{nbytes / 1024**3:.1f} GiB. Load it at its native size (leave image_size unset) "
                f"and resize in the augmentation pipeline instead."
            )
        images = resize_images(images, size)
    return InMemoryDataset(images, labels, name=name, class_names=class_names)


def to_uint8(x: np.ndarray, scale: float) -> np.ndarray:
    """Float array in [0, scale] -> uint8 in [0, 255] (rounded)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * (255.0 / scale)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- digits


def load_digits(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """scikit-learn's ``load_digits()``: 1,797 8×8 grey digits, 10 classes; no root needed."""
    if split != "all":
        raise DatasetError(f"dataset 'digits' has no train/test split; use split='all' (got '{split}').")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = to_uint8(bunch.images, 16.0)[:, None]
    return finish(
        images,
        bunch.target.astype(np.int64),
        name="digits",
        class_names=[str(i) for i in range(10)],
        image_size=image_size,
        channels=channels,
    )


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed) as in LeCun's MNIST format."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if ndim else 1
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: expected {count} values of shape {tuple(dims)}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(tuple(dims))
    return arr.astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# md5 of the official train-labels .gz files (as listed by torchvision): catches pointing one
# dataset's loader at the other's files, which share their names.
_LABEL_MD5 = {
    "mnist": "d53e105ee54ea40749a09fcbcd1e9432",
    "fashion_mnist": "25c81989df183df01b3e8a0aad5dffbe",
    "kmnist": "e144d726b3acfaa3e44228e80efcd344",
}
_MNIST_CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    # Kuzushiji-MNIST: one cursive hiragana per class, romanised as torchvision names them
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    # original names, their gzip versions, and the "train-images.idx3-ubyte" spelling
    alt = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", alt, alt + ".gz"):
        p = folder / candidate
        if p.is_file():
            return p
    return None


def _load_mnist_like(dataset: str, tv_folder: str, root, image_size, split, channels) -> InMemoryDataset:
    expected = (
        f"the torchvision layout {tv_folder}/raw/ under the root, or the four idx files "
        f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte, optionally .gz) directly in the root."
    )
    base = check_root(dataset, root, expected)
    splits = resolve_splits(dataset, split)
    candidates = [base / tv_folder / "raw", base / "raw", base]
    folder = None
    for cand in candidates:
        if cand.is_dir() and all(_find_idx(cand, _MNIST_FILES[(s, k)]) for s in splits for k in ("images", "labels")):
            folder = cand
            break
    if folder is None:
        raise DatasetError(
            f"dataset '{dataset}': no idx files found under {base} (looked in "
            f"{', '.join(str(c) for c in candidates)}). Expected {expected}"
        )
    lbl = _find_idx(folder, _MNIST_FILES[("train", "labels")])
    if lbl is not None and lbl.suffix == ".gz" and lbl.stat().st_size < 1 << 20:
        digest = hashlib.md5(lbl.read_bytes()).hexdigest()
        other = next((k for k, v in _LABEL_MD5.items() if v == digest and k != dataset), None)
        if other is not None:
            raise DatasetError(
                f"dataset '{dataset}': the files in {folder} are the official {other} files, not "
                f"{dataset}. Point the root at the {dataset} files (torchvision layout {tv_folder}/raw/)."
            )
    images, labels = [], []
    for s in splits:
        ipath = _find_idx(folder, _MNIST_FILES[(s, "images")])
        lpath = _find_idx(folder, _MNIST_FILES[(s, "labels")])
        try:
            x, y = read_idx(ipath), read_idx(lpath)
        except ValueError as exc:
            raise DatasetError(f"dataset '{dataset}': cannot parse {folder}: {exc}.") from exc
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.dtype != np.uint8:
            raise DatasetError(
                f"dataset '{dataset}': {ipath} / {lpath} do not hold N×H×W uint8 images with N labels "
                f"(got {x.shape} {x.dtype} and {y.shape})."
            )
        images.append(x[:, None])
        labels.append(y.astype(np.int64))
    return finish(
        np.concatenate(images),
        np.concatenate(labels),
        name=dataset,
        class_names=list(_MNIST_CLASSES[dataset]),
        image_size=image_size,
        channels=channels,
    )


def load_mnist(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """MNIST, 70,000 28×28 grey (train 60k + test 10k): torchvision ``MNIST/raw`` or the idx files."""
    return _load_mnist_like("mnist", "MNIST", root, image_size, split, channels)


def load_fashion_mnist(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """Fashion-MNIST, 70,000 28×28 grey: torchvision ``FashionMNIST/raw`` or the idx files."""
    return _load_mnist_like("fashion_mnist", "FashionMNIST", root, image_size, split, channels)


def load_kmnist(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """Kuzushiji-MNIST, 70,000 28×28 grey: torchvision ``KMNIST/raw`` or the idx files."""
    return _load_mnist_like("kmnist", "KMNIST", root, image_size, split, channels)


# --------------------------------------------------------------------------- USPS


def load_usps(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """USPS, 9,298 16×16 grey digits: ``usps.h5`` (train/test data+target) or torchvision's bz2 files.

    ``root`` is the folder holding ``usps.h5`` (or ``usps.bz2`` and ``usps.t.bz2``) or the h5 file.
    """
    expected = (
        "a folder with usps.h5 (groups train/ and test/, each with data (N,256) in [0,1] and target), "
        "the usps.h5 file itself, or torchvision's usps.bz2 and usps.t.bz2."
    )
    base = check_root("usps", root, expected)
    splits = resolve_splits("usps", split)
    h5 = base if base.is_file() else base / "usps.h5"
    images, labels = [], []
    if h5.is_file():
        import h5py

        try:
            with h5py.File(h5, "r") as f:
                for s in splits:
                    x = np.asarray(f[f"{s}/data"][:])
                    y = np.asarray(f[f"{s}/target"][:]).astype(np.int64).reshape(-1)
                    if x.ndim != 2 or x.shape[1] != 256 or x.shape[0] != y.shape[0]:
                        raise DatasetError(
                            f"dataset 'usps': {h5} {s}/data has shape {x.shape}, expected (N, 256) "
                            f"with {y.shape[0]} targets."
                        )
                    lo, hi = float(x.min()), float(x.max())
                    if lo < -1e-6 or hi > 1 + 1e-6:
                        raise DatasetError(
                            f"dataset 'usps': {h5} {s}/data values lie in [{lo}, {hi}], expected [0, 1]."
                        )
                    images.append(to_uint8(x, 1.0).reshape(-1, 1, 16, 16))
                    labels.append(y)
        except (OSError, KeyError) as exc:
            raise DatasetError(f"dataset 'usps': cannot read {h5}: {exc}. Expected {expected}") from exc
    elif base.is_dir() and all((base / f).is_file() for f in ("usps.bz2", "usps.t.bz2")):
        from torchvision.datasets import USPS

        for s in splits:
            tv = USPS(str(base), train=(s == "train"), download=False)
            images.append(np.asarray(tv.data, dtype=np.uint8)[:, None])
            labels.append(np.asarray(tv.targets, dtype=np.int64))
    else:
        raise DatasetError(f"dataset 'usps': no usps.h5 (nor usps.bz2 + usps.t.bz2) in {base}. Expected {expected}")
    y = np.concatenate(labels)
    if y.min() < 0 or y.max() > 9:
        raise DatasetError(f"dataset 'usps': labels in {base} range over [{y.min()}, {y.max()}], expected 0..9.")
    return finish(
        np.concatenate(images), y, name="usps", class_names=[str(i) for i in range(10)],
        image_size=image_size, channels=channels,
    )


# --------------------------------------------------------------------------- COIL-20


def load_coil20(root=None, *, image_size=None, split="all", channels=None) -> InMemoryDataset:
    """COIL-20 (Deng Cai's 32×32 ``COIL20.mat``): 1,440 grey images, 20 objects × 72 poses.

    ``fea`` holds one image per column (or per row), each a column-major 32×32 image; ``gnd``
    labels 1..20 become 0..19.
    """
    expected = "a folder with COIL20.mat (fea: 1440 column-major 32×32 images in [0,1]; gnd: labels 1..20) or the file."
    base = check_root("coil20", root, expected)
    if split != "all":
        raise DatasetError(f"dataset 'coil20' has no train/test split; use split='all' (got '{split}').")
    mat = base if base.is_file() else base / "COIL20.mat"
    if not mat.is_file():
        raise DatasetError(f"dataset 'coil20': {mat} does not exist. Expected {expected}")
    import scipy.io

    try:
        m = scipy.io.loadmat(str(mat))
        fea = np.asarray(m["fea"], dtype=np.float64)
        gnd = np.asarray(m["gnd"]).astype(np.int64).reshape(-1)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"dataset 'coil20': cannot read {mat}: {exc}. Expected {expected}") from exc
    n = gnd.shape[0]
    if fea.shape == (1024, n):
        fea = fea.T
    if fea.shape != (n, 1024):
        raise DatasetError(f"dataset 'coil20': {mat} fea has shape {fea.shape}, expected (1024, {n}) or ({n}, 1024).")
    if gnd.min() < 1:
        raise DatasetError(f"dataset 'coil20': {mat} gnd labels start at {gnd.min()}, expected 1..20.")
    scale = 255.0 if fea.max() > 1 + 1e-6 else 1.0
    # column-major 32×32: reshape row-major then transpose H and W
    images = to_uint8(fea, scale).reshape(n, 32, 32).transpose(0, 2, 1)[:, None]
    labels = gnd - 1
    k = int(labels.max()) + 1
    return finish(
        images, labels, name="coil20", class_names=[f"obj{i + 1}" for i in range(k)],
        image_size=image_size, channels=channels,
    )


# --------------------------------------------------------------------------- STL-10

_STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def load_stl10(root=None, *, image_size=None, split="all", channels=None, unlabeled=False) -> InMemoryDataset:
    """STL-10 binaries (torchvision layout ``stl10_binary/``): 96×96 RGB, train 5k + test 8k.

    ``unlabeled=True`` appends the 100,000 unlabelled images with label -1; ``split="unlabeled"``
    loads only those (the extra pass of CC's STL-10 protocol: recipe section ``[unlabeled]``).
    """
    expected = (
        "the torchvision layout stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin[,unlabeled_X.bin]} "
        "under the root."
    )
    base = check_root("stl10", root, expected)
    if split == "unlabeled":
        splits, unlabeled = [], True
    else:
        splits = resolve_splits("stl10", split)
    folder = base / "stl10_binary" if (base / "stl10_binary").is_dir() else base
    needed = [f"{s}_{k}.bin" for s in splits for k in ("X", "y")] + (["unlabeled_X.bin"] if unlabeled else [])
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"dataset 'stl10': missing {', '.join(missing)} in {folder}. Expected {expected}")

    def read_x(path: Path) -> np.ndarray:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise DatasetError(f"dataset 'stl10': {path} size is not a multiple of 3×96×96 bytes.")
        # stored column-major per channel: transpose to C×H×W as torchvision does
        return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)

    images, labels = [], []
    for s in splits:
        x = read_x(folder / f"{s}_X.bin")
        y = np.fromfile(folder / f"{s}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if y.shape[0] != x.shape[0]:
            raise DatasetError(f"dataset 'stl10': {s}_X.bin has {x.shape[0]} images but {s}_y.bin {y.shape[0]} labels.")
        images.append(x)
        labels.append(y)
    if unlabeled:
        x = read_x(folder / "unlabeled_X.bin")
        images.append(x)
        labels.append(np.full(x.shape[0], -1, dtype=np.int64))
    if not images:
        raise DatasetError(f"dataset 'stl10': nothing to load in {folder}.")
    names_file = folder / "class_names.txt"
    class_names = list(_STL10_CLASSES)
    if names_file.is_file():
        lines = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        if len(lines) == 10:
            class_names = lines
    x = np.concatenate(images) if len(images) > 1 else images[0]
    return finish(
        x, np.concatenate(labels), name="stl10" + ("-unlabeled" if not splits else "+unlabeled" if unlabeled else ""),
        class_names=class_names, image_size=image_size, channels=channels,
    )
