"""CIFAR-10 (torchvision pickles, or the lossy JPEG copy) and CIFAR-100 (pickles, 20 superclasses)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from clustkit.atomic import atomic_write

from .arrays import finish, resolve_splits
from .base import DatasetError, InMemoryDataset, check_root

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

# fine label -> coarse label (superclass k lists its five fine classes)
CIFAR100_SUPERCLASSES = {
    0: [72, 4, 95, 30, 55], 1: [73, 32, 67, 91, 1], 2: [92, 70, 82, 54, 62], 3: [16, 61, 9, 10, 28],
    4: [51, 0, 53, 57, 83], 5: [40, 39, 22, 87, 86], 6: [20, 25, 94, 84, 5], 7: [14, 24, 6, 7, 18],
    8: [43, 97, 42, 3, 88], 9: [37, 17, 76, 12, 68], 10: [49, 33, 71, 23, 60], 11: [15, 21, 19, 31, 38],
    12: [75, 63, 66, 64, 34], 13: [77, 26, 45, 99, 79], 14: [11, 2, 35, 46, 98], 15: [29, 93, 27, 78, 44],
    16: [65, 50, 74, 36, 80], 17: [56, 52, 47, 59, 96], 18: [8, 58, 90, 13, 48], 19: [81, 69, 41, 89, 85],
}
FINE_TO_COARSE = np.zeros(100, dtype=np.int64)
for _coarse, _fines in CIFAR100_SUPERCLASSES.items():
    FINE_TO_COARSE[_fines] = _coarse

JPEG_TAR = "CIFAR-10-images.tar.gz"
JPEG_DIR = "CIFAR-10-images"
_EXPECTED10 = (
    "the torchvision pickles cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} under the "
    f"root, or the JPEG copy: {JPEG_TAR} (in the root, or the root itself), or its extracted "
    f"{JPEG_DIR}/{{train,test}}/<class>/NNNN.jpg tree."
)


def default_cache_dir() -> Path:
    env = os.environ.get("CLUSTKIT_CACHE_DIR")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "clustkit"


def _unpickle(path: Path, dataset: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"dataset '{dataset}': cannot read the pickle {path}: {exc}.") from exc


def _pickle_images(entry: dict, path: Path, dataset: str) -> np.ndarray:
    data = np.asarray(entry.get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"dataset '{dataset}': {path} 'data' has shape {data.shape}, expected (N, 3072).")
    return data.reshape(-1, 3, 32, 32)


# --------------------------------------------------------------------------- CIFAR-10


def _cifar10_pickle_dir(base: Path) -> Path | None:
    for cand in (base / "cifar-10-batches-py", base):
        if cand.is_dir() and (cand / "data_batch_1").is_file():
            return cand
    return None


def _load_cifar10_pickles(folder: Path, splits: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    needed = [f for s in splits for f in files[s]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"dataset 'cifar10': missing {', '.join(missing)} in {folder}. Expected {_EXPECTED10}")
    images, labels = [], []
    for f in needed:
        entry = _unpickle(folder / f, "cifar10")
        x = _pickle_images(entry, folder / f, "cifar10")
        y = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise DatasetError(f"dataset 'cifar10': {folder / f} has {x.shape[0]} images but labels {y.shape}.")
        images.append(x)
        labels.append(y)
    names = list(CIFAR10_CLASSES)
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta", "cifar10")
        if len(meta.get("label_names", [])) == 10:
            names = [str(n) for n in meta["label_names"]]
    return np.concatenate(images), np.concatenate(labels), names


def _jpeg_tree(base: Path) -> Path | None:
    for cand in (base / JPEG_DIR, base):
        if cand.is_dir() and (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def _list_jpeg_tree(tree: Path, splits: list[str]) -> dict[str, list[list[Path]]]:
    """split -> per class (standard order) -> files sorted by number."""
    out = {}
    for s in splits:
        per_class = []
        missing = [c for c in CIFAR10_CLASSES if not (tree / s / c).is_dir()]
        if missing:
            raise DatasetError(
                f"dataset 'cifar10' (JPEG copy): {tree / s} lacks the class folders {', '.join(missing)}. "
                f"Expected {_EXPECTED10}"
            )
        for c in CIFAR10_CLASSES:
            files = [p for p in (tree / s / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
            files.sort(key=lambda p: (0, int(p.stem), p.name) if p.stem.isdigit() else (1, 0, p.name))
            per_class.append(files)
        out[s] = per_class
    return out


def _decode_files(files: list[Path]) -> np.ndarray:
    """Decode image files into uint8 N×3×32×32."""
    out = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"dataset 'cifar10': cannot read {path}: {exc}.") from exc
        out[i] = _decode_bytes(data, str(path))
    return out


def _atomic_save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _decoded_split(split: str, cache: Path, files: list[list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split of an extracted JPEG tree, cached as ``cache/decoded-<split>.npz``."""
    counts = np.array([len(f) for f in files], dtype=np.int64)
    npz = cache / f"decoded-{split}.npz"
    if npz.is_file():
        try:
            with np.load(npz) as z:
                if np.array_equal(z["counts"], counts):
                    return z["images"], z["labels"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # corrupt or stale cache: decode again
    flat = [p for per in files for p in per]
    labels = np.repeat(np.arange(len(files), dtype=np.int64), counts)
    images = _decode_files(flat)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _atomic_save_npz(npz, images=images, labels=labels, counts=counts)
    except OSError:
        pass  # a read-only cache only costs speed
    return images, labels


def _file_key(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _decode_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode one image with PIL (torchvision.io's decoders are deprecated since 0.29) -> uint8 3×32×32."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"dataset 'cifar10': cannot decode {where}: {exc}.") from exc
    if arr.shape != (32, 32, 3):
        raise DatasetError(f"dataset 'cifar10': {where} is {arr.shape[1]}×{arr.shape[0]}, expected 32×32.")
    return arr.transpose(2, 0, 1)


def _decode_tar(archive: Path) -> dict[str, np.ndarray]:
    """Decode every ``<split>/<class>/<n>.jpg`` of the archive in one streaming pass.

    Nothing is written to disk: extracting 60,000 small files costs far more than decoding them
    straight from the archive, and the decoded arrays are what gets cached.
    """
    found: dict[str, list[tuple[int, tuple, np.ndarray]]] = {"train": [], "test": []}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = member.name.replace("\\", "/").split("/")
                if not member.isfile() or len(parts) < 3 or parts[-3] not in found:
                    continue
                stem, ext = os.path.splitext(parts[-1])
                if ext.lower() not in (".jpg", ".jpeg", ".png") or stem.startswith("."):
                    continue
                cls = parts[-2]
                if cls not in CIFAR10_CLASSES:
                    raise DatasetError(
                        f"dataset 'cifar10': {archive} holds the unexpected class folder {member.name!r}; "
                        f"expected the CIFAR-10 classes {', '.join(CIFAR10_CLASSES)}."
                    )
                data = tar.extractfile(member).read()
                key = (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
                found[parts[-3]].append((CIFAR10_CLASSES.index(cls), key,
                                         _decode_bytes(data, f"{archive}:{member.name}")))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"dataset 'cifar10': cannot read the archive {archive}: {exc}. "
                           f"Expected {_EXPECTED10}") from exc
    out = {}
    for split, items in found.items():
        present = {c for c, _, _ in items}
        missing = [c for k, c in enumerate(CIFAR10_CLASSES) if k not in present]
        if missing:
            raise DatasetError(
                f"dataset 'cifar10': {archive} lacks {split}/ images of the classes {', '.join(missing)}. "
                f"Expected {_EXPECTED10}"
            )
        items.sort(key=lambda t: (t[0], t[1]))
        out[f"{split}_images"] = np.stack([t[2] for t in items])
        out[f"{split}_labels"] = np.array([t[0] for t in items], dtype=np.int64)
    return out


def _decoded_tar(archive: Path, cache_root: Path, splits: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decoded arrays of the archive, cached as ``cache_root/cifar10-jpg-<sha>.npz`` (written atomically)."""
    npz = cache_root / f"cifar10-jpg-{_file_key(archive)}.npz"
    arrays = None
    if npz.is_file():
        try:
            with np.load(npz) as z:
                arrays = {k: z[k] for k in z.files if k.split("_")[0] in splits}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            arrays = None  # corrupt cache: decode again
    if arrays is None:
        arrays = _decode_tar(archive)
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            _atomic_save_npz(npz, **arrays)
        except OSError:
            pass  # an unwritable cache only costs speed
    return [arrays[f"{s}_images"] for s in splits], [arrays[f"{s}_labels"] for s in splits]


def load_cifar10(root=None, *, image_size=None, split="all", channels=None, cache_dir=None) -> InMemoryDataset:
    """CIFAR-10, 60,000 32×32 RGB (train 50k + test 10k), 10 classes in the standard order.

    Reads torchvision's pickles (lossless, ``name="cifar10"``) when present, else the JPEG copy
    (``name="cifar10-jpg"``, lossy): an extracted ``CIFAR-10-images/`` tree, or
    ``CIFAR-10-images.tar.gz`` decoded straight from the archive (no extraction). The decoded
    images are cached once, atomically, as ``.npz`` in ``cache_dir`` (default
    ``$CLUSTKIT_CACHE_DIR`` or ``~/.cache/clustkit``), keyed by the archive's sha256 (or by the
    tree's path and per-class file counts).
    """
    base = check_root("cifar10", root, _EXPECTED10)
    splits = resolve_splits("cifar10", split)
    cache_root = Path(os.path.expanduser(str(cache_dir))) if cache_dir else default_cache_dir()

    if base.is_dir() and (folder := _cifar10_pickle_dir(base)) is not None:
        x, y, names = _load_cifar10_pickles(folder, splits)
        return finish(x, y, name="cifar10", class_names=names, image_size=image_size, channels=channels)

    tree = _jpeg_tree(base) if base.is_dir() else None
    if tree is not None:
        # decoded cache for a user-provided tree lives in the cache dir, keyed by its path
        key = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:16]
        listing = _list_jpeg_tree(tree, splits)
        images, labels = [], []
        for s in splits:
            x, y = _decoded_split(s, cache_root / f"cifar10-jpg-tree-{key}", listing[s])
            images.append(x)
            labels.append(y)
    else:
        archive = base if base.is_file() else base / JPEG_TAR
        if not archive.is_file():
            raise DatasetError(
                f"dataset 'cifar10': found neither pickles, nor a JPEG tree, nor {JPEG_TAR} at {base}. "
                f"Expected {_EXPECTED10}"
            )
        images, labels = _decoded_tar(archive, cache_root, splits)
    return finish(
        np.concatenate(images) if len(images) > 1 else images[0],
        np.concatenate(labels),
        name="cifar10-jpg",
        class_names=list(CIFAR10_CLASSES),
        image_size=image_size,
        channels=channels,
    )


# --------------------------------------------------------------------------- CIFAR-100


def load_cifar100(root=None, *, image_size=None, split="all", channels=None, superclasses=True) -> InMemoryDataset:
    """CIFAR-100 pickles (torchvision layout ``cifar-100-python/{train,test,meta}``), 60,000 32×32 RGB.

    ``superclasses=True`` (default, the clustering protocol) uses the 20 coarse labels
    (``name="cifar100-20"``); ``False`` the 100 fine labels (``name="cifar100"``).
    """
    expected = "the torchvision pickles cifar-100-python/{train,test,meta} under the root."
    base = check_root("cifar100", root, expected)
    splits = resolve_splits("cifar100", split)
    folder = base / "cifar-100-python" if (base / "cifar-100-python").is_dir() else base
    missing = [s for s in splits if not (folder / s).is_file()]
    if missing:
        raise DatasetError(f"dataset 'cifar100': missing {', '.join(missing)} in {folder}. Expected {expected}")
    meta = _unpickle(folder / "meta", "cifar100") if (folder / "meta").is_file() else {}
    images, labels = [], []
    for s in splits:
        entry = _unpickle(folder / s, "cifar100")
        x = _pickle_images(entry, folder / s, "cifar100")
        fine = np.asarray(entry.get("fine_labels", []), dtype=np.int64)
        if fine.shape != (x.shape[0],):
            raise DatasetError(f"dataset 'cifar100': {folder / s} has {x.shape[0]} images "
                               f"but fine_labels {fine.shape}.")
        if superclasses:
            coarse = entry.get("coarse_labels")
            y = np.asarray(coarse, dtype=np.int64) if coarse is not None else FINE_TO_COARSE[fine]
        else:
            y = fine
        images.append(x)
        labels.append(y)
    if superclasses:
        names = [str(n) for n in meta.get("coarse_label_names", [])] or [f"superclass{k}" for k in range(20)]
        name = "cifar100-20"
    else:
        names = [str(n) for n in meta.get("fine_label_names", [])] or [f"class{k}" for k in range(100)]
        name = "cifar100"
    return finish(
        np.concatenate(images), np.concatenate(labels), name=name, class_names=names,
        image_size=image_size, channels=channels,
    )
