"""Sharded tar archives in the WebDataset format, read by random access (``data.name = "webdataset"``).

A WebDataset shard is a plain tar file whose members are grouped into samples by key: every file
of a sample shares the path up to the first dot of its name (``000123.jpg`` and ``000123.cls``
make sample ``000123``). Images larger than memory are usually stored this way, since a few large
files read far faster than millions of small ones on network filesystems.

clustkit reads the shards by random access instead of streaming them: one scan of the tar headers
records where each image's bytes lie, and each item is then one positioned read. That keeps
everything the engine relies on (an epoch order that is a pure function of the seed, exact resume,
per-item indices for self-labelling and evaluation, sharding by rank) and still decodes in
DataLoader workers, with only the index (about 100 bytes per image) in memory. Shards must be
uncompressed tar files on a filesystem (local or network-mounted); the ``webdataset`` package's
``ShardWriter`` writes them.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .base import DatasetError, FolderDataset, as_size, check_root
from .folder import IMG_EXTENSIONS, SPLIT_DIRS

EXPECTED = ("WebDataset shards: a folder of .tar files (or train/ and test/ subfolders of them), a glob "
            "such as shards/*.tar, or a brace pattern such as shards/train-{000000..000099}.tar; each sample an "
            "image (.jpg, .png, ...) and optionally its label as text in a .cls file")


def _sample_key(member: str) -> tuple[str, str]:
    """(key, extension) of a tar member by the WebDataset rule: the extension starts at the first
    dot of the file name, the key is everything before it (directories included)."""
    folder, _, name = member.rpartition("/")
    stem, dot, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def _shard_paths(root: str, split: str) -> list[Path]:
    """The shard files ``root`` names, in order."""
    brace = "{" in root
    pattern = brace or any(c in root for c in "*?[")
    if brace:
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise DatasetError("dataset 'webdataset': a brace pattern in data.root needs the braceexpand package: "
                               "pip install 'clustkit[webdataset]'.") from None
        found = [Path(p) for p in braceexpand(root)]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise DatasetError(f"dataset 'webdataset': {len(missing)} shard(s) of {root} do not exist, e.g. "
                               f"{missing[0]}. Expected {EXPECTED}.")
    elif pattern:
        found = [Path(p) for p in sorted(glob.glob(root))]
    else:
        base = check_root("webdataset", root, EXPECTED)
        subs = {s: base / n for s, names in SPLIT_DIRS.items() for n in names if (base / n).is_dir()}
        if base.is_file():
            found = [base]
        elif split != "all":
            if split not in subs:
                raise DatasetError(f"dataset 'webdataset': split '{split}' needs a {split}/ subfolder of shards "
                                   f"in {base}; use split = \"all\" for the shards directly in it.")
            found = sorted(subs[split].glob("*.tar"))
        else:  # the shards in the folder, else those of its split subfolders pooled (the papers' protocol)
            found = sorted(base.glob("*.tar")) or sorted(p for f in subs.values() for p in f.glob("*.tar"))
    if not found:
        raise DatasetError(f"dataset 'webdataset': no .tar shards match {root}. Expected {EXPECTED}.")
    if split != "all" and pattern:
        raise DatasetError("dataset 'webdataset': with a pattern in data.root the pattern picks the shards; "
                           f"leave data.split at \"all\" (it is '{split}').")
    return found


def _scan(shard: Path) -> list[tuple[str, int, int, int]]:
    """(key, data offset, size, label or -1) of every sample with an image in ``shard``, in tar order.

    Only the headers are parsed while walking the tar; the small ``.cls`` members are read afterwards
    by position, through one descriptor."""
    samples: dict[str, list] = {}  # key -> [image offset, image size, (.cls offset, size) or None]
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _sample_key(m.name)
                entry = samples.setdefault(key, [None, 0, None])
                if f".{ext}" in IMG_EXTENSIONS and entry[0] is None:
                    entry[0], entry[1] = m.offset_data, m.size
                elif ext == "cls":
                    entry[2] = (m.offset_data, m.size, m.name)
    except tarfile.ReadError as exc:
        raise DatasetError(f"dataset 'webdataset': {shard} is not an uncompressed tar file ({exc}); shards are read "
                           "by random access, so compressed (.tar.gz) shards must be unpacked. "
                           f"Expected {EXPECTED}.") from None
    out = []
    fd = os.open(shard, os.O_RDONLY)
    try:
        for key, (off, size, cls) in samples.items():
            if off is None:
                continue
            label = -1
            if cls is not None:
                text = os.pread(fd, cls[1], cls[0]).decode("utf-8", "replace").strip()
                try:
                    label = int(text)
                except ValueError:
                    raise DatasetError(f"dataset 'webdataset': {shard}:{cls[2]} holds {text[:40]!r}, not an integer "
                                       "class index.") from None
            out.append((key, off, size, label))
    finally:
        os.close(fd)
    return out


class TarShardDataset(FolderDataset):
    """Images inside WebDataset tar shards, each read with one positioned read (``os.pread``, so
    DataLoader workers forked from one process never share a file position) and decoded like a file."""

    def __init__(self, shards: list[Path], offsets: np.ndarray, sizes: np.ndarray, shard_of: np.ndarray,
                 names: list[str], labels: np.ndarray, **kwargs):
        super().__init__(names, labels, **kwargs)
        self.shards = [str(s) for s in shards]
        self.offsets, self.sizes, self.shard_of = offsets, sizes, shard_of
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _open(self, index: int) -> BinaryIO:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        s = int(self.shard_of[index])
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
        return io.BytesIO(os.pread(fd, int(self.sizes[index]), int(self.offsets[index])))

    def __getstate__(self):
        state = super().__getstate__()
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                with contextlib.suppress(OSError):
                    os.close(fd)


def _index(shards: list[Path]) -> tuple[list[int], list[int], list[int], list[str], list[int]]:
    """(offsets, sizes, shard numbers, names, labels) of every sample of ``shards``, in order."""
    offsets, sizes, shard_of, names, labels = [], [], [], [], []
    for i, shard in enumerate(shards):
        for key, off, size, label in _scan(shard):
            offsets.append(off)
            sizes.append(size)
            shard_of.append(i)
            names.append(f"{shard}:{key}")
            labels.append(label)
    return offsets, sizes, shard_of, names, labels


def _index_once(shards: list[Path]) -> tuple[list[int], list[int], list[int], list[str], list[int]]:
    """:func:`_index`, scanned by rank 0 only in a multi-process run and sent to the other ranks (the
    same shards on a shared filesystem: one scan instead of one per process); a scan error stops every rank."""
    from clustkit import dist

    if not dist.is_distributed():
        return _index(shards)
    found: tuple[str, object] | None = None
    if dist.is_main():
        try:
            found = ("index", _index(shards))
        except DatasetError as exc:
            found = ("error", str(exc))
    kind, value = dist.broadcast_object(found)
    if kind == "error":
        raise DatasetError(str(value))
    return value  # type: ignore[return-value]


def load_webdataset(root=None, *, image_size=None, split="all", channels=3) -> TarShardDataset:
    """WebDataset tar shards (see the module docstring); labels from ``.cls`` members, else unlabelled."""
    if root is None or str(root) == "":
        check_root("webdataset", root, EXPECTED)
    shards = _shard_paths(str(root), split)
    offsets, sizes, shard_of, names, labels = _index_once(shards)
    if not names:
        raise DatasetError(f"dataset 'webdataset': the {len(shards)} shard(s) of {root} hold no images. "
                           f"Expected {EXPECTED}.")
    lab = np.asarray(labels, dtype=np.int64)
    has_labels = bool((lab >= 0).any())
    if has_labels and bool((lab < 0).any()):
        raise DatasetError(f"dataset 'webdataset': {int((lab < 0).sum())} of {len(lab)} samples in {root} have no .cls "
                           "label while the others do; label every sample or none.")
    size = as_size(image_size or 224)
    return TarShardDataset(shards, np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                           np.asarray(shard_of, dtype=np.int32), names, lab if has_labels else None,
                           name="webdataset", image_size=size, channels=channels,
                           num_classes=int(lab.max()) + 1 if has_labels else None)
