"""Whether a file-backed dataset is decoded into memory once or read from disk every epoch
(``data.in_memory``), and how many DataLoader workers decode it (``run.num_workers = "auto"``)."""

from __future__ import annotations

import os
import sys
from typing import Literal

from .base import ClusterDataset, DatasetError

InMemory = Literal["auto"] | bool

#: "auto" decodes into memory when the decoded images take at most this share of the memory
#: available to each process of this machine (torchrun starts one copy per process).
AUTO_SHARE = 0.25


def available_bytes() -> int:
    """Memory the kernel can give without swapping (``MemAvailable``), or the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 0


def processes_on_this_node() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpus_per_process() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // processes_on_this_node())


def auto_workers(in_memory: bool) -> int:
    """DataLoader workers for ``run.num_workers = "auto"``: none for images already in memory
    (slicing a tensor needs no worker), else one per CPU of this process, at most 8."""
    return 0 if in_memory else min(8, cpus_per_process())


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def place(ds: ClusterDataset, in_memory: InMemory, key: str) -> ClusterDataset:
    """``ds`` decoded into memory, or as it is (read from its files in DataLoader workers)."""
    to_memory = getattr(ds, "to_memory", None)
    if to_memory is None:  # an array file its loader already read into memory
        if in_memory is False:
            raise DatasetError(
                f"dataset '{key}': data.in_memory = false, but {key} is read from one array file into memory by its "
                "loader. Only datasets of image files (image_folder, imagenet10, imagenet_dogs, tiny_imagenet, "
                "webdataset) can stay on disk; use in_memory = \"auto\" or true.")
        return ds
    if in_memory is False:
        return ds
    need = ds.decoded_bytes()
    if in_memory == "auto":
        budget = AUTO_SHARE * available_bytes() / processes_on_this_node()
        if need > budget:
            print(f"data: {len(ds)} images ({_gb(need)} decoded) stay on disk, more than {AUTO_SHARE:.0%} of the "
                  f"memory available to each process ({_gb(budget / AUTO_SHARE)}); they are decoded in DataLoader "
                  "workers every epoch (data.in_memory = true forces memory)", file=sys.stderr)
            return ds
    return to_memory(num_workers=auto_workers(in_memory=False))  # decoding them is a pass from disk

