"""IcicleGCN's stage-2 networks and equations (pure torch; docs/methods/iciclegcn.md).

* ``GCNLayer``: Â·(H·W), Xavier-uniform weight, no bias.
* ``fuse``: σ·G_self + γ·G_other + w_ae·H, the layer-wise fusion of the two streams and the AE.
* ``Trident``: the AE plus two 5-layer GCN streams (separate or shared weights), fused layer by
  layer, plus the Student-t centres.
* ``student_t`` / ``target_distribution``: DEC's soft assignment Q and sharpened target P.
* ``build_graphs``: the two sparse kNN graphs (``clustkit.cluster.neighbors.graph_from_neighbors``);
  in a multi-process run each rank searches a slice of the queries (``knn_across_ranks``).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clustkit.cluster.neighbors import graph_from_neighbors
from clustkit.cluster.sharded import knn_across_ranks

from .autoencoder import JCSlimAE


class GCNLayer(nn.Module):
    """One graph convolution Â·(H·W): Xavier-uniform W (in × out), no bias (SDCN/IcicleGCN)."""

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        bound = (6.0 / (self.weight.shape[0] + self.weight.shape[1])) ** 0.5
        with torch.no_grad():
            self.weight.uniform_(-bound, bound, generator=generator)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        support = h @ self.weight
        return torch.sparse.mm(adj, support) if adj.is_sparse else adj @ support


def fuse(g_self: torch.Tensor, g_other: torch.Tensor, h_ae: torch.Tensor, sigma: float, gamma: float,
         ae_weight: float) -> torch.Tensor:
    """Input of a stream's next GCN layer: σ·(its own layer) + γ·(the other stream's) + w·(AE layer)."""
    return sigma * g_self + gamma * g_other + ae_weight * h_ae


class Trident(nn.Module):
    """The AE and two GCN streams (a: small k, b: large k), fused layer by layer.

    GCN widths are d → hidden… → K → K (paper: d→500→500→2000→K→K): layer 1 reads the
    features, layer ℓ+1 reads ``fuse`` of both streams' layer ℓ and AE encoder layer ℓ (the
    last AE layer is the softmax code). ReLU after every GCN layer but the last, whose output
    is softmaxed into G_a / G_b. ``share_weights`` uses stream a's layers for stream b too.
    """

    def __init__(self, ae: JCSlimAE, n_clusters: int, *, sigma: float, gamma: float, ae_weight: float,
                 share_weights: bool, generator: torch.Generator | None = None):
        super().__init__()
        self.ae = ae
        dims = [*ae.dims, n_clusters]  # d, hidden…, K, K

        def stream() -> nn.ModuleList:
            return nn.ModuleList(GCNLayer(a, b, generator) for a, b in itertools.pairwise(dims))

        self.gcn_a = stream()
        self.gcn_b = None if share_weights else stream()
        self.centers = nn.Parameter(torch.zeros(n_clusters, n_clusters))  # Student-t centres in code space
        self.sigma, self.gamma, self.ae_weight = sigma, gamma, ae_weight

    def forward(self, x: torch.Tensor, adj_a: torch.Tensor, adj_b: torch.Tensor) -> dict[str, Any]:
        hs = self.ae.encode_layers(x)
        x_hat = self.ae.decode(hs[-1])
        layers_b = self.gcn_b if self.gcn_b is not None else self.gcn_a
        n = len(self.gcn_a)
        ga = torch.relu(self.gcn_a[0](x, adj_a))
        gb = torch.relu(layers_b[0](x, adj_b))
        for i in range(1, n):
            in_a = fuse(ga, gb, hs[i - 1], self.sigma, self.gamma, self.ae_weight)
            in_b = fuse(gb, ga, hs[i - 1], self.sigma, self.gamma, self.ae_weight)
            ga, gb = self.gcn_a[i](in_a, adj_a), layers_b[i](in_b, adj_b)
            if i < n - 1:
                ga, gb = torch.relu(ga), torch.relu(gb)
        return {"code": hs[-1], "layers": hs, "x_hat": x_hat, "logits_a": ga, "logits_b": gb}


def student_t(z: torch.Tensor, centers: torch.Tensor, v: float = 1.0) -> torch.Tensor:
    """DEC soft assignment q_ij ∝ (1 + ‖z_i − μ_j‖²/v)^(−(v+1)/2), rows normalised (N×K)."""
    d2 = (z.unsqueeze(1) - centers.unsqueeze(0)).pow(2).sum(-1)
    q = (1.0 + d2 / v).pow(-(v + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC target p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'), f_j = Σ_i q_ij."""
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def kl_to(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) = (1/N) Σ_ij p_ij (log p_ij − log q_ij), as ``F.kl_div(..., reduction="batchmean")``."""
    return F.kl_div(log_q, p, reduction="batchmean")


def build_graphs(features: torch.Tensor, k_a: int, k_b: int, normalization: str,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The two sparse N×N kNN graphs: edges to the k nearest neighbours (Euclidean, self
    excluded; the heat kernel of the paper is monotone in distance), made symmetric, self-loops
    added, normalised. Never builds a dense N×N matrix (FAISS or blocked torch search).

    Every rank holds all the features (stage 2 trains on all of them); in a multi-process run
    each searches its slice of the queries and the N×k neighbour indices are all-gathered, so
    the search is split instead of repeated (one process: ``knn_graph`` exactly)."""
    graphs = tuple(graph_from_neighbors(knn_across_ranks(features, k, exclude_self=True, backend=backend)[1],
                                        symmetric=True, self_loops=True, normalization=normalization)
                   for k in (k_a, k_b))
    return graphs[0], graphs[1]
