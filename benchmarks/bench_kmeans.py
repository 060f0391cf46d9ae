"""Benchmark clustkit k-means (faiss and torch backends) against scikit-learn.

All methods run on the same Gaussian-mixture features with n_init=1 and the
same max_iter; we report wall time, process CPU time (all threads; less
sensitive than wall time to other load on the machine) and the k-means
objective (inertia).
A method is skipped at a size when linear extrapolation from its time at the
previous size exceeds --max-seconds.

    python benchmarks/bench_kmeans.py --sizes 10000,100000,1000000 --k 100 --out kmeans.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from clustkit.cluster.backend import faiss_available
from clustkit.cluster.kmeans import kmeans

Runner = Callable[[np.ndarray, int, int, int], tuple[float, int]]


def gaussian_mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    """k unit-variance Gaussians with N(0, 2^2) centres, generated in float32 blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(k, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s : s + m] = centres[rng.integers(0, k, m)] + rng.standard_normal((m, dim), dtype=np.float32)
    return x


def run_clustkit(backend: str, device: str | None = None) -> Runner:
    def run(x: np.ndarray, k: int, max_iter: int, seed: int) -> tuple[float, int]:
        res = kmeans(x, k, backend=backend, n_init=1, max_iter=max_iter, seed=seed,
                     device=device if backend == "torch" else None)
        return res.inertia, res.n_iter

    return run


def run_sklearn(x: np.ndarray, k: int, max_iter: int, seed: int) -> tuple[float, int]:
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=1, max_iter=max_iter, random_state=seed).fit(x)
    return float(km.inertia_), int(km.n_iter_)


LABELS = {"faiss": "clustkit faiss", "torch": "clustkit torch", "sklearn": "sklearn KMeans"}


def methods(device: str | None = None) -> dict[str, Runner]:
    out: dict[str, Runner] = {}
    if faiss_available():
        out["faiss"] = run_clustkit("faiss")
    out["torch"] = run_clustkit("torch", device)
    out["sklearn"] = run_sklearn
    return out


def timed(run: Runner, x: np.ndarray, args: argparse.Namespace) -> dict[str, object]:
    """Wall and process CPU time of one run, with the machine's load around it."""
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    inertia, n_iter = run(x, args.k, args.max_iter, args.seed)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "inertia": inertia,
        "n_iter": n_iter,
        "loadavg_1min": (load_before, os.getloadavg()[0]),
    }


def environment() -> dict[str, object]:
    import sklearn
    import torch

    env: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sklearn": sklearn.__version__,
    }
    if faiss_available():
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_omp_threads"] = faiss.omp_get_max_threads()
    return env


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    best = {}
    for r in rows:
        if "inertia" in r:
            best[r["n"]] = min(best.get(r["n"], float("inf")), float(r["inertia"]))
    lines = [
        f"D={args.dim}, K={args.k}, max_iter={args.max_iter}, n_init=1",
        "",
        "| N | method | wall time (s) | CPU time (s) | inertia | inertia / best | iterations "
        "| 1-min load before/after |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']:,} | {r['method']} | skipped: {r['skipped']} | | | | | |")
            continue
        rel = float(r["inertia"]) / best[r["n"]]
        load = "{:.1f} / {:.1f}".format(*r["loadavg_1min"])
        lines.append(
            f"| {r['n']:,} | {r['method']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['inertia']:.4g} "
            f"| {rel:.4f} | {r['n_iter']} | {load} |"
        )
    return "\n".join(lines)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated N values")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--max-iter", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="skip a run predicted to exceed this")
    ap.add_argument("--methods", default="faiss,torch,sklearn", help="subset of faiss,torch,sklearn")
    ap.add_argument("--device", default=None, help="the torch backend's device (default: CPU), e.g. cuda")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args()

    wanted = args.methods.split(",")
    runners = {name: run for name, run in methods(args.device).items() if name in wanted}
    warm = gaussian_mixture(2000, args.dim, args.k, seed=1)
    for run in runners.values():  # exclude one-off library start-up from the timings
        run(warm, args.k, 2, args.seed)

    rows: list[dict[str, object]] = []
    last_time: dict[str, tuple[int, float]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        x = gaussian_mixture(n, args.dim, args.k, args.seed)
        for name, run in runners.items():
            row: dict[str, object] = {"n": n, "method": LABELS[name]}
            if name in last_time:
                prev_n, prev_t = last_time[name]
                predicted = prev_t * n / prev_n
                if predicted > args.max_seconds:
                    row["skipped"] = f"predicted {predicted:.0f}s > --max-seconds {args.max_seconds:.0f}"
                    rows.append(row)
                    print(row, flush=True)
                    continue
            row.update(timed(run, x, args))
            last_time[name] = (n, float(row["seconds"]))
            rows.append(row)
            print(row, flush=True)
        del x

    print(markdown(rows, args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "environment": environment(), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
