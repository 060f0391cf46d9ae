"""What a run's process used, as a bench records it in ``resources.json``: peak RSS (of the process and of its
data-loader workers), peak GPU memory, wall time and exit status. Standard library only (torch is read only
when the run imported it), so that the process that runs one bench run can import it before anything else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clustkit.atomic import atomic_write

RESOURCES = "resources.json"  # peak memory and process wall time, written by the run's process
THREADS_ENV = "CLUSTKIT_BENCH_THREADS"  # the torch threads a run's child process sets before it runs (0: default)


def peak_rss_mb() -> float:
    """The peak RSS of this process or of its largest child (data-loader workers), whichever is larger."""
    import resource

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # data-loader workers
    return max(own, kids) / scale


def gpu_peak_mb() -> float | None:
    """Peak GPU memory allocated by torch in this process (None without CUDA or when torch never used it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return vm_hwm_mb() > 0
    except OSError:
        return False


def vm_hwm_mb() -> float:
    """This process's peak RSS since the last ``reset_peak_rss`` (Linux ``VmHWM``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def write_resources(path: Path, peak_rss: float, exit_code: int, wall_s: float, threads: int, mode: str,
                    scope: str) -> None:
    """Write one run's ``resources.json`` (``threads`` 0: PyTorch's default, recorded as null)."""
    gpu = gpu_peak_mb()
    info: dict[str, Any] = {"peak_rss_mb": round(peak_rss, 1), "peak_gpu_mb": None if gpu is None else round(gpu, 1),
                            "exit_code": exit_code, "process_wall_s": round(wall_s, 3), "threads": threads or None,
                            "mode": mode, "peak_rss_scope": scope}
    atomic_write(path, json.dumps(info, indent=2) + "\n")
