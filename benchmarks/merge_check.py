"""A merge check for UMAP + GMM clusterings, measured and not shipped (docs/plugins/manifold.md).

For each run folder: its backbone features (exported with ``clustkit export``) are embedded by
UMAP as the ``umap`` evaluator does (10-d, 15 cosine neighbours, min_dist 0, seed = the run's
seed), clustered by a GMM with K components and with more (``--over``), and each over-clustering
is merged back to K by the kNN edges of the feature space between clusters (edges divided by the
smaller cluster's total, most joined pair first). ACC by the labels is the researcher's check.

    clustkit export runs/slm/cc__stage=none/seed2 --features backbone --out /tmp/cc2
    python benchmarks/merge_check.py /tmp/cc2:2 /tmp/cc1:1 --over 15,20,30
"""

from __future__ import annotations

import argparse

import numpy as np

from clustkit.cluster.manifold import embed, neighbor_graph
from clustkit.cluster.metrics import cluster_acc
from clustkit_manifold.evaluator import cluster_embedding


def merge_by_edges(labels: np.ndarray, neighbors: np.ndarray, k: int) -> np.ndarray:
    """Join the two clusters with the most kNN edges between them (over the smaller one's edges)
    until ``k`` are left; ``neighbors`` holds each row's neighbours, itself first."""
    lab = np.unique(labels, return_inverse=True)[1]
    while lab.max() + 1 > k:
        n = lab.max() + 1
        edges = np.zeros((n, n))
        np.add.at(edges, (np.repeat(lab, neighbors.shape[1] - 1), lab[neighbors[:, 1:].ravel()]), 1)
        edges += edges.T
        total = edges.sum(1)
        w = edges / np.minimum(total[:, None], total[None, :])
        np.fill_diagonal(w, -1)
        a, b = np.unravel_index(w.argmax(), w.shape)
        lab = np.unique(np.where(lab == b, a, lab), return_inverse=True)[1]
    return lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exports", nargs="+", help="FOLDER:SEED, FOLDER holding backbone.npy and labels.npy")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--over", default="15,20,30", help="GMM components before the merge")
    args = ap.parse_args()
    print("| features | GMM with K | " + " | ".join(f"{o} → {args.k}" for o in args.over.split(",")) + " |")
    for spec in args.exports:
        folder, seed = spec.rsplit(":", 1)
        x = np.load(f"{folder}/backbone.npy").astype(np.float32)
        y = np.load(f"{folder}/labels.npy")
        graph = neighbor_graph(x, 15, "cosine")
        z = embed(x, args.k, 15, 0.0, "cosine", int(seed), graph)
        row = [cluster_acc(y, cluster_embedding(z, args.k, "gmm", 5, int(seed))[0])]
        for over in map(int, args.over.split(",")):
            over_labels = cluster_embedding(z, over, "gmm", 5, int(seed))[0]
            row.append(cluster_acc(y, merge_by_edges(over_labels, graph[0], args.k)))
        print(f"| {folder} | " + " | ".join(f"{a:.3f}" for a in row) + " |", flush=True)


if __name__ == "__main__":
    main()
