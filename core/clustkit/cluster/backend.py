"""Which backend clusters or searches, and the FAISS pieces every backend user shares.

k-means (``clustkit.cluster.kmeans``), exact kNN (``clustkit.cluster.neighbors``) and their
multi-process twins (``clustkit.cluster.sharded``) all pick "faiss" or "torch" the same way, build
the same flat FAISS indexes and hand FAISS the same float32 arrays; keeping that here lets each of
them import it without importing the others. faiss and torch are imported lazily so importing this
module stays cheap (``clustkit --help`` must not pull in torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "FaissNotAvailableError",
    "as_float32_array",
    "faiss_available",
    "faiss_devices",
    "faiss_flat_index",
    "faiss_gpu_count",
    "resolve_backend",
    "validate_kmeans_args",
]

BACKENDS = ("auto", "faiss", "torch")


class FaissNotAvailableError(ImportError):
    """Raised when the FAISS backend is requested but ``faiss`` cannot be imported."""


def faiss_available() -> bool:
    """True if ``faiss`` can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 for faiss-cpu or when faiss is missing)."""
    if not faiss_available():
        return 0
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def faiss_devices() -> list[int | str]:
    """Where a FAISS search index goes by default: every GPU FAISS sees in a single-process run,
    the process's own GPU in a multi-process one (each rank already searches only its shard),
    else ``["cpu"]``."""
    n = faiss_gpu_count()
    if n == 0:
        return ["cpu"]
    from clustkit import dist

    if dist.world_size() > 1:
        import torch

        return [torch.cuda.current_device()]
    return list(range(n))


def faiss_flat_index(
    d: int, *, inner_product: bool = False, devices: Sequence[int | str] | None = None, shard: bool = True
) -> Any:
    """An empty exact (flat) FAISS index of dimension ``d`` spread over ``devices``.

    ``devices`` lists GPU ids or ``"cpu"`` entries (default :func:`faiss_devices`). One CPU
    device gives ``IndexFlatL2`` (``IndexFlatIP`` with ``inner_product``). GPUs get that index
    cloned by ``faiss.index_cpu_to_all_gpus`` (GPUs 0..g-1; other ids through
    ``index_cpu_to_gpus_list``, which it calls), as an ``IndexShards`` when ``shard`` (each
    device holds a slice of the database: large databases) or an ``IndexReplicas`` (each holds
    all of it and answers a slice of the queries: small databases such as centroids). Several
    ``"cpu"`` entries build that same structure over CPU flat indexes, the CPU twin through which
    the multi-device index is tested. Every variant returns the single flat index's results.
    """
    import faiss

    devices = list(faiss_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    flat = faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2
    if all(dev == "cpu" for dev in devices):
        if len(devices) == 1:
            return flat(d)
        multi = faiss.IndexShards(d, False, True) if shard else faiss.IndexReplicas(d, False)
        for _ in devices:
            (multi.add_shard if shard else multi.addIndex)(flat(d))  # faiss keeps the sub-index alive
        return multi
    if any(isinstance(dev, str) for dev in devices):
        raise ValueError(f"devices must be all GPU ids or all 'cpu', got {devices}")
    gpus = [int(dev) for dev in devices]
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard
    if gpus == list(range(len(gpus))):
        return faiss.index_cpu_to_all_gpus(flat(d), co=co, ngpu=len(gpus))
    return faiss.index_cpu_to_gpus_list(flat(d), co=co, gpus=gpus)


def as_float32_array(x: Any) -> np.ndarray:
    """C-contiguous float32 numpy copy/view of an array or tensor, as FAISS requires."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def resolve_backend(backend: str, what: str = "k-means") -> str:
    """"faiss" or "torch" for a requested backend ("auto": FAISS when it can be imported)."""
    if backend not in BACKENDS:
        raise ValueError(f"{what} backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise FaissNotAvailableError(
            f"{what} backend 'faiss' requested but faiss is not installed; "
            "install faiss-cpu (or faiss-gpu) or use backend='torch'"
        )
    return backend


def validate_kmeans_args(shape: tuple[int, ...], k: int, n_init: int, max_iter: int) -> None:
    """Reject bad k-means arguments for an N x D matrix of ``shape`` before any work, with the same
    message from every entry point (one process, FAISS, or every rank of a sharded run)."""
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
    if len(shape) != 2:
        raise ValueError(f"x must be 2-D (N x D), got shape {shape}")
    n, d = shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if d == 0:
        raise ValueError("x has zero features")
