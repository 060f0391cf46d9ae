"""The feature cache: a frozen backbone's features of every item, extracted once, memory-mapped.

A folder per (the frozen model's weights and preprocessing, the dataset, the evaluation view),
named by a hash of them, under ``[features] cache_dir``::

    <cache_dir>/features/<key>/
        meta.json              what the key was made of, the shape, the format version
        eval.npy               N x D float16: the evaluation view's features
        aug-<hash>.npy         R x V x N x D float16: R rounds of the V training views (with a .json)
        chunks/<part>-<c>.json one file per finished chunk of rows: its checksum, its unreadable items

Extraction runs in chunks of ``[features] batch_size`` items; a chunk counts once its marker is
written (atomically, after its rows are flushed), so an interrupted extraction resumes at the
first missing chunk and a second run extracts nothing. Every open checks each chunk's rows against
the marker's checksum: a corrupt chunk is extracted again, with a warning, never used. The
augmented rounds are drawn from a fixed seed per (round, chunk), so an extraction resumed after a
kill holds what an uninterrupted one would. Under torchrun each rank extracts every world-th
chunk into the same files (the cache folder must be shared by the ranks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustkit import dist
from clustkit.atomic import atomic_write

if TYPE_CHECKING:
    from clustkit.engine.state import RunState

FORMAT = 1
AUG_SEED = 20231  # the cached augmentations do not depend on the run's seed: every seed shares them


def cache_root(recipe: Any) -> Path:
    """``[features] cache_dir``, else ``$CLUSTKIT_CACHE_DIR`` or ``~/.cache/clustkit``; then ``features/``."""
    from clustkit.data.cifar import default_cache_dir

    base = recipe.features.cache_dir
    return (Path(os.path.expanduser(base)) if base else default_cache_dir()) / "features"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes and values) of the frozen model."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Any, data_cfg: Any) -> str:
    """The dataset's options, its labels and its content: the decoded images when it holds them in
    memory, else each file's path, size and modification time."""
    parts = [json.dumps(data_cfg.model_dump(mode="json"), sort_keys=True, default=str).encode(),
             str(len(dataset)).encode(), np.ascontiguousarray(np.asarray(dataset.labels, dtype=np.int64)).tobytes()]
    images = getattr(dataset, "images", None)
    if images is not None:
        parts.append(np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images).tobytes())
    else:
        for p in getattr(dataset, "paths", []):
            st = os.stat(p) if os.path.exists(p) else None
            parts.append(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    return _sha(*parts)


class CachePart:
    """One memory-mapped array of the cache (``eval`` or an ``aug-<hash>``) and its chunk markers."""

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...], chunk: int):
        self.folder = folder
        self.name = name
        self.shape = shape  # (..., N, D)
        self.chunk = chunk
        self.path = folder / f"{name}.npy"
        self.n = shape[-2]

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    def rows(self, c: int) -> slice:
        return slice(c * self.chunk, min(self.n, (c + 1) * self.chunk))

    def marker(self, c: int) -> Path:
        return self.folder / "chunks" / f"{self.name}-{c:06d}.json"

    def create(self) -> None:
        """The array file, zeros, unless it exists (one process creates it: ranks share the folder)."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=self.shape).flush()

    def open(self, mode: str) -> np.memmap:
        array = np.load(self.path, mmap_mode=mode)
        if array.shape != self.shape or array.dtype != np.float16:
            raise ValueError(f"{self.path} holds {array.dtype} {array.shape}, not float16 {self.shape}")
        return array

    @staticmethod
    def checksum(array: np.ndarray, rows: slice) -> int:
        return zlib.crc32(np.ascontiguousarray(array[..., rows, :]).tobytes())

    def verified(self, chunks: list[int] | None = None) -> tuple[list[int], set[int]]:
        """(chunks to extract, unreadable items of the finished ones) among ``chunks`` (default: all):
        a chunk whose rows do not match its marker's checksum is to extract again (and said so)."""
        todo: list[int] = []
        unreadable: set[int] = set()
        try:
            array = self.open("r") if self.path.exists() else None
        except ValueError:
            array = None
        for c in range(self.n_chunks) if chunks is None else chunks:
            mark = self.marker(c)
            if array is None or not mark.exists():
                todo.append(c)
                continue
            try:
                info = json.loads(mark.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("crc32") != self.checksum(array, self.rows(c)):
                print(f"warning: feature cache {self.path}: rows {self.rows(c).start}-{self.rows(c).stop - 1} do not "
                      "match their checksum (a damaged file); extracting them again", file=sys.stderr)
                mark.unlink(missing_ok=True)
                todo.append(c)
                continue
            unreadable.update(info.get("unreadable", []))
        return todo, unreadable

    def finish(self, array: np.ndarray, c: int, unreadable: list[int]) -> None:
        array.flush()
        atomic_write(self.marker(c), json.dumps({"crc32": self.checksum(array, self.rows(c)),
                                                 "unreadable": unreadable}))


class FeatureCache:
    """The cached features a run on ``[features]`` trains on: ``eval`` (N x D) and ``aug``
    (R x V x N x D, V the training views in ``view_names`` order), both float16 memory maps."""

    def __init__(self, folder: Path, eval_part: CachePart, aug_part: CachePart | None, view_names: list[str]):
        self.folder = folder
        self.eval_part = eval_part
        self.aug_part = aug_part
        self.view_names = view_names
        self.eval: np.ndarray | None = None
        self.aug: np.ndarray | None = None
        self.unreadable: set[int] = set()
        self.extracted = 0  # chunks this process extracted (0: everything came from the cache)

    def parts(self) -> list[CachePart]:
        return [p for p in (self.eval_part, self.aug_part) if p is not None]

    def load(self) -> None:
        self.eval = self.eval_part.open("r")
        self.aug = self.aug_part.open("r") if self.aug_part is not None else None


def view_names(run: RunState) -> list[str]:
    """The training views the recipe's [views] generator declared."""
    return list(getattr(run.components.views.obj, "view_names", None) or [])


def _eval_probe(run: RunState) -> str:
    """A hash of the evaluation view of the first items: two recipes whose views give the same
    evaluation input share the cached evaluation features, whatever else their views do."""
    x, _, _ = next(iter(run.sources["data"].eval_batches(np.arange(min(8, run.sources["data"].n)))))
    view = run.ctx.make_views(x, train=False)["eval"]
    return _sha(view.detach().float().cpu().numpy().round(5).tobytes(), str(tuple(view.shape)).encode())


def open_cache(run: RunState) -> FeatureCache:
    """The run's cache folder and parts (nothing extracted yet): keyed by the frozen model's weights
    and preprocessing, the dataset, and the evaluation view; the augmented part by the views'
    settings and the number of rounds."""
    r = run.recipe
    f = r.features
    assert f is not None
    trunk = run.ctx.model.backbone
    frozen = trunk.frozen
    model = {"format": FORMAT, "model": type(getattr(frozen, "net", frozen)).__name__,
             "weights": weights_hash(frozen), "input_stats": getattr(frozen, "input_stats", None),
             "input_resize": getattr(frozen, "input_resize", None),
             "data": dataset_fingerprint(run.ctx.dataset, r.data), "eval_view": _eval_probe(run)}
    key = _sha(json.dumps(model, sort_keys=True, default=str).encode())[:20]
    folder = cache_root(r) / key
    n, dim = len(run.ctx.dataset), trunk.feature_dim
    resolved = r.to_dict()
    meta = {**model, "n": n, "dim": dim, "chunk": f.batch_size, "backbone": resolved["backbone"]}
    _check_meta(folder, meta)
    names = view_names(run)
    aug = None
    if f.augmentations:
        views = {"views": resolved["views"], "names": names, "rounds": f.augmentations, "seed": AUG_SEED}
        tag = _sha(json.dumps(views, sort_keys=True).encode())[:12]
        aug = CachePart(folder, f"aug-{tag}", (f.augmentations, len(names), n, dim), f.batch_size)
        if dist.is_main() and not (folder / f"aug-{tag}.json").exists():
            atomic_write(folder / f"aug-{tag}.json", json.dumps(views, indent=1))
    return FeatureCache(folder, CachePart(folder, "eval", (n, dim), f.batch_size), aug, names)


def _check_meta(folder: Path, meta: dict[str, Any]) -> None:
    """A folder whose meta.json disagrees with what its key stands for (another format, a shape
    that changed) is stale: emptied, and built again."""
    path = folder / "meta.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        same = ("format", "n", "dim", "chunk")  # the rest is named by the folder's key, or only informative
        if isinstance(old, dict) and all(old.get(k) == meta[k] for k in same):
            return
        if dist.is_main():
            print(f"warning: feature cache {folder} is stale (meta.json differs from this run's model, data or "
                  "chunking); building it again", file=sys.stderr)
            for p in sorted(folder.rglob("*"), reverse=True):
                if p.is_file():
                    p.unlink()
    dist.barrier()
    if dist.is_main():
        atomic_write(path, json.dumps(meta, indent=1, default=str))
    dist.barrier()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process extracts into a folder at a time (bench cells sharing a cache wait, then reuse);
    the ranks of one torchrun job share the work instead."""
    if dist.world_size() > 1:
        yield
        return
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(run: RunState, cache: FeatureCache) -> FeatureCache:
    """Extract whatever chunk the cache lacks (or has damaged), then map it for reading."""
    with _locked(cache.folder):
        plan = {p.name: p.verified() for p in cache.parts()}
        todo = sorted({c for missing, _ in plan.values() for c in missing})
        mine = [c for c in todo if c % dist.world_size() == dist.rank()]
        if todo and dist.is_main():
            for part in cache.parts():
                part.create()
        dist.barrier()
        if mine:
            _extract(run, cache, mine, {name: set(missing) for name, (missing, _) in plan.items()}, len(todo))
        dist.barrier()
        for part in cache.parts():
            before, unreadable = plan[part.name]
            missing, extracted = part.verified(before) if before else ([], set())  # the rest was checked above
            if missing:
                raise RuntimeError(f"the feature cache {part.path} still lacks rows {part.rows(missing[0])} after "
                                   "extraction (another process writing into it?)")
            cache.unreadable |= unreadable | extracted
    cache.load()
    return cache


@torch.no_grad()
def _extract(run: RunState, cache: FeatureCache, chunks: list[int], missing: dict[str, set[int]],
             total: int) -> None:
    ctx = run.ctx
    frozen = ctx.model.backbone.frozen
    source = run.sources["data"]
    arrays = {p.name: p.open("r+") for p in cache.parts()}
    frozen.eval()
    # NHWC: oneDNN's convolutions on a CPU, tensor cores on a GPU (EfficientNet-Lite0 on 2 CPU cores:
    # 35 against 21 images/s); the weights' values, and so the cache key, are unchanged
    frozen.to(memory_format=torch.channels_last)
    progress = _Progress(run, len(chunks), total)

    def features(view: torch.Tensor) -> np.ndarray:
        if view.dim() == 4:
            view = view.contiguous(memory_format=torch.channels_last)
        with ctx.autocast():
            return frozen(view).float().cpu().numpy().astype(np.float16)

    try:
        for c in chunks:
            rows = cache.eval_part.rows(c)
            x = torch.cat([b[0] for b in source.eval_batches(np.arange(rows.start, rows.stop))])
            bad = sorted(i for i in source.unreadable if rows.start <= i < rows.stop)
            if c in missing.get("eval", ()):
                arrays["eval"][rows] = features(ctx.make_views(x, train=False)["eval"])
                cache.eval_part.finish(arrays["eval"], c, bad)
            part = cache.aug_part
            if part is not None and c in missing[part.name]:
                for r in range(part.shape[0]):
                    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                        torch.manual_seed(AUG_SEED + 1_000_003 * r + c)
                        views = ctx.make_views(x, train=True)
                    for v, name in enumerate(cache.view_names):
                        arrays[part.name][r, v, rows] = features(views[name])
                part.finish(arrays[part.name], c, bad)
            cache.extracted += 1
            progress.advance(len(x))
    finally:
        progress.close()


class _Progress:
    """A bar on a terminal; otherwise a line at each tenth of the chunks (logs of cluster jobs)."""

    def __init__(self, run: RunState, mine: int, total: int):
        self.started = time.perf_counter()
        self.mine, self.done, self.images = mine, 0, 0
        self.console = run.console
        self.bar: Any = None
        self.enabled = dist.is_main()
        if self.enabled:
            self.console.print(f"extracting features: {total} chunk(s) of {run.recipe.features.batch_size} items"
                               f" missing from the cache{' (shared over the ranks)' if dist.world_size() > 1 else ''}",
                               markup=False, highlight=False)
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("features", total=mine, rate="")

    def advance(self, images: int) -> None:
        self.done += 1
        self.images += images
        rate = f"{self.images / max(time.perf_counter() - self.started, 1e-9):.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=rate)
        elif self.enabled and (self.done == self.mine or self.done % -(-self.mine // 10) == 0):
            self.console.print(f"features: {self.done}/{self.mine} chunks, {rate}", markup=False, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
