"""Memory per rank of the whole-dataset steps across ranks: sharded versus gathered.

Two gloo processes on one machine, one thread each. Every rank generates only its half of the
rows (row blocks from per-block seeds, so both modes cluster the same data). Then

* k-means, **sharded**: ``sharded_kmeans`` on the half each rank holds (O(k·D) exchanged);
* k-means, **gathered** (what the engine did before): every rank all-gathers the whole matrix,
  rank 0 runs ``torch_kmeans`` on it and broadcasts the result (``ctx.group``'s old path);
* kNN, **sharded**: ``sharded_knn`` of each rank's rows, the shards broadcast one at a time;
* kNN, **gathered**: every rank all-gathers the matrix and searches every row (IcicleGCN's
  graph before: each rank built it from all the features).

Each (step, mode) runs in two fresh processes, so the peak resident set (VmHWM, the kernel's
high-water mark, and ``ru_maxrss``) is that step's alone. k-means runs a fixed number of Lloyd
iterations (``tol = 0``) after k-means++ seeding.

    python benchmarks/bench_sharded_memory.py                       # 1M x 128, k=100; kNN 200k x 128, k=10
    python benchmarks/bench_sharded_memory.py --n 100000 --knn-n 20000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BLOCK = 100_000  # rows generated per seed


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc (VmRSS, VmHWM)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _rows(start: int, stop: int, dim: int, k: int, seed: int) -> Any:
    """Rows [start, stop) of a k-component Gaussian mixture (N(0, 2²) centres, unit noise),
    generated block by block from per-block seeds: any rank can make any slice on its own."""
    import numpy as np

    centres = np.random.default_rng(seed).normal(scale=2.0, size=(k, dim)).astype(np.float32)
    out = np.empty((stop - start, dim), dtype=np.float32)
    for b in range(start // BLOCK, -(-stop // BLOCK)):
        lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)
        rng = np.random.default_rng((seed, b))
        block = centres[rng.integers(0, k, BLOCK)] + rng.standard_normal((BLOCK, dim), dtype=np.float32)
        out[lo - start : hi - start] = block[lo - b * BLOCK : hi - b * BLOCK]
    return out


def _worker(rank: int, world: int, port: int, step: str, mode: str, args: dict[str, Any], folder: str) -> None:
    import torch
    import torch.distributed as tdist

    from clustkit import dist
    from clustkit.cluster.kmeans import torch_kmeans
    from clustkit.cluster.neighbors import knn
    from clustkit.cluster.sharded import sharded_kmeans, sharded_knn

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = args["n"] if step == "kmeans" else args["knn_n"]
        mine = dist.shard_range(n)
        sizes = [len(dist.shard_range(n, of_rank=r)) for r in range(world)]
        rss_start, _ = _rss_mib()
        local = torch.from_numpy(_rows(mine.start, mine.stop, args["dim"], args["components"], args["seed"]))
        rss_data, _ = _rss_mib()
        dist.barrier()
        t0 = time.perf_counter()
        if step == "kmeans":
            kw = dict(n_init=1, max_iter=args["iters"], tol=0.0, seed=0)
            if mode == "sharded":
                res = sharded_kmeans(local, args["k"], **kw).gathered()
            else:
                full = dist.all_gather_rows(local, sizes)
                res = dist.broadcast_object(torch_kmeans(full, args["k"], **kw) if rank == 0 else None)
            summary = {"inertia": res.inertia, "n_iter": res.n_iter}
        else:
            if mode == "sharded":
                _, idx = sharded_knn(local, args["knn_k"], backend=args["knn_backend"])
            else:
                full = dist.all_gather_rows(local, sizes)
                _, idx = knn(full, args["knn_k"], backend=args["knn_backend"])
                idx = idx[mine.start : mine.stop]
            summary = {"idx_checksum": int(idx.sum())}  # this rank's rows' neighbours: the same in both modes
        dist.barrier()
        wall = time.perf_counter() - t0
        _, peak = _rss_mib()
        out = {"rank": rank, "step": step, "mode": mode, "wall_s": wall, "rss_start_mib": rss_start,
               "rss_data_mib": rss_data, "peak_mib": peak,
               "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **summary}
        Path(folder, f"{step}-{mode}-{rank}.json").write_text(json.dumps(out))
    finally:
        dist.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="k-means rows")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=100, help="k-means clusters")
    p.add_argument("--components", type=int, default=100, help="mixture components of the data")
    p.add_argument("--iters", type=int, default=5, help="Lloyd iterations (fixed)")
    p.add_argument("--knn-n", type=int, default=200_000, help="kNN rows (0: skip kNN)")
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--knn-backend", choices=("faiss", "torch"), default="faiss")
    p.add_argument("--seed", type=int, default=0)
    args = vars(p.parse_args())

    import torch.multiprocessing as mp

    os.environ["OMP_NUM_THREADS"] = "1"
    world = 2
    steps = ["kmeans"] + (["knn"] if args["knn_n"] else [])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for step in steps:
            for mode in ("sharded", "gathered"):
                mp.start_processes(_worker, args=(world, _free_port(), step, mode, args, folder), nprocs=world,
                                   join=True, start_method="spawn")
                rows += [json.loads(Path(folder, f"{step}-{mode}-{r}.json").read_text()) for r in range(world)]
                print(f"done: {step} {mode}", file=sys.stderr, flush=True)

    data_mib = {s: (args["n"] if s == "kmeans" else args["knn_n"]) * args["dim"] * 4 / 2**20 for s in steps}
    print(f"command: python benchmarks/bench_sharded_memory.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"k-means: {args['n']:,} x {args['dim']} float32 ({data_mib['kmeans']:.0f} MiB), k = {args['k']}, "
          f"k-means++ + {args['iters']} Lloyd iterations; "
          + (f"kNN: {args['knn_n']:,} x {args['dim']} ({data_mib['knn']:.0f} MiB), k = {args['knn_k']}, "
             f"{args['knn_backend']} search; "
             if "knn" in data_mib else "")
          + "2 gloo processes, 1 thread each\n")
    print("| step | mode | rank | RSS after imports (MiB) | RSS with its rows (MiB) | peak RSS, VmHWM (MiB) "
          "| ru_maxrss (MiB) | wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['mode']} | {r['rank']} | {r['rss_start_mib']:.0f} | {r['rss_data_mib']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['ru_maxrss_mib']:.0f} | {r['wall_s']:.1f} |")
    for step in steps:
        got = {m: [r for r in rows if r["step"] == step and r["mode"] == m] for m in ("sharded", "gathered")}
        keys = [k for k in got["sharded"][0] if k in ("inertia", "n_iter", "idx_checksum")]
        print(f"\n{step}: sharded " + ", ".join(f"{k} {got['sharded'][0][k]}" for k in keys)
              + "; gathered " + ", ".join(f"{k} {got['gathered'][0][k]}" for k in keys))


if __name__ == "__main__":
    main()
