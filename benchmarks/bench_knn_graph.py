"""Benchmark clustkit.neighbors.knn_graph at IcicleGCN scale on CPU.

Builds the sparse kNN graph of random N x D features and reports wall time,
CPU time, the process peak RSS (ru_maxrss), the peak of Python-tracked allocations
(tracemalloc, which sees numpy but not torch or faiss buffers) and the size a
dense N x N float32 matrix would need, to show that none was materialised.

    python benchmarks/bench_knn_graph.py --n 100000 --dim 512 --k 10 --out knn.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import tracemalloc

import numpy as np

from clustkit.cluster.backend import faiss_available
from clustkit.cluster.neighbors import knn_graph

GB = 1e9


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    ap.add_argument("--normalization", default="sym", choices=["sym", "row", "none"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args()

    import torch  # torch and faiss are loaded before measuring so start-up is not counted

    faiss_available()

    x = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
    rss_before = peak_rss_bytes()
    load_before = os.getloadavg()[0]
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    adj = knn_graph(x, args.k, normalization=args.normalization, backend=args.backend)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    result = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "backend": args.backend,
        "normalization": args.normalization,
        "seconds": wall,
        "cpu_seconds": cpu,
        "loadavg_1min": (load_before, os.getloadavg()[0]),
        "nnz": int(adj._nnz()),
        "features_gb": x.nbytes / GB,
        "peak_rss_before_gb": rss_before / GB,
        "peak_rss_gb": peak_rss_bytes() / GB,
        "tracemalloc_peak_gb": py_peak / GB,
        "dense_nxn_float32_gb": 4 * args.n * args.n / GB,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


def markdown(r: dict[str, object]) -> str:
    return "\n".join(
        [
            "| N | D | k | backend | wall time (s) | CPU time (s) | nnz | features (GB) "
            "| peak RSS before build (GB) | peak RSS after build (GB) | tracemalloc peak (GB) "
            "| dense N×N float32 (GB) | 1-min load before/after |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {r['n']:,} | {r['dim']} | {r['k']} | {r['backend']} | {r['seconds']:.1f} "
            f"| {r['cpu_seconds']:.1f} | {r['nnz']:,} "
            f"| {r['features_gb']:.3f} | {r['peak_rss_before_gb']:.3f} | {r['peak_rss_gb']:.3f} "
            f"| {r['tracemalloc_peak_gb']:.3f} | {r['dense_nxn_float32_gb']:.1f} "
            "| {:.1f} / {:.1f} |".format(*r["loadavg_1min"]),
        ]
    )


if __name__ == "__main__":
    main()
