"""DCHL: Deep Clustering with Hybrid-grained contrastive and discriminative Learning
(Deng et al., IEEE TCSVT 2024).

CC's instance branch and a cluster trunk shared by a coarse-grained branch (softmax over K,
CC's cluster contrast) and a fine-grained branch (128-d, L2-normalised) that is grouped by
in-batch k-means into K_f groups; self and cross instance-group discrimination tie the
fine-grained groups to the fine and instance embeddings (methods.md §3).

L = L_ins + L_clu + L_self + L_cross, each weight a recipe key. ``dchl_group`` rejects
K_f >= batch size (the shipped K_f = 400 at batch 256 makes every sample its own group,
methods.md §7.2 item 3) unless ``allow_degenerate = true``. See docs/plugins/dchl.md.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import hookimpl
from clustkit.registry import ComponentConfig, LossConfig, Registry

__version__ = "0.1.0"
F = "clustkit_dchl.components:"
Pair = tuple[str, str]


class CoarseHeadConfig(ComponentConfig):
    trunk: str = Field("cluster_trunk", description="heads naming the same trunk share it (DCHL's cross projector)")
    hidden: int = Field(512, ge=1, description="trunk: Linear(in -> hidden) -> ReLU")


class FineHeadConfig(ComponentConfig):
    trunk: str = Field("cluster_trunk", description="heads naming the same trunk share it (DCHL's cross projector)")
    hidden: int = Field(512, ge=1, description="trunk: Linear(in -> hidden) -> ReLU")
    out_dim: int = Field(128, ge=2, description="fine-grained embedding size (L2-normalised)")


class InstanceConfig(LossConfig):
    head: str = "instance"
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1)
    temperature: float = Field(0.5, gt=0)


class ClusterConfig(LossConfig):
    head: str = "cluster"
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1)
    temperature: float = Field(1.0, gt=0)
    entropy_weight: float = Field(1.0, ge=0, description="weight of log K - H(p) per view")


class GroupConfig(LossConfig):
    """L_self and L_cross over in-batch k-means groups of the fine-grained embeddings."""

    fine_head: str = "fine"
    instance_head: str = "instance"
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1)
    groups: int = Field(32, ge=2, description="K_f, in-batch k-means groups; must be < run.batch_size")
    iters: int = Field(5, ge=1, description="Lloyd iterations")
    temperature: float = Field(0.2, gt=0, description="tau_g")
    self_weight: float = Field(1.0, ge=0, description="L_self (fine query); 0 = not computed")
    cross_weight: float = Field(1.0, ge=0, description="L_cross (instance query); 0 = not computed")
    allow_degenerate: bool = Field(False, description="accept groups >= batch size (the reference's K_f=400 at "
                                                      "batch 256: every sample its own group)")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "dchl_coarse", F + "build_coarse_head", CoarseHeadConfig,
                 doc="shared cluster trunk -> Linear to K -> softmax (coarse-grained branch)")
    registry.add("head", "dchl_fine", F + "build_fine_head", FineHeadConfig,
                 doc="shared cluster trunk -> Linear to 128 -> L2 (fine-grained branch)")
    registry.add("loss", "dchl_instance", F + "DCHLInstance", InstanceConfig,
                 doc="L_ins: NT-Xent over view pairs (tau 0.5)")
    registry.add("loss", "dchl_cluster", F + "DCHLCluster", ClusterConfig,
                 doc="L_clu: coarse-branch cluster contrast + entropy (tau 1.0)")
    registry.add("loss", "dchl_group", F + "DCHLGroup", GroupConfig,
                 doc="L_self + L_cross: instance-group discrimination on in-batch k-means groups (tau 0.2)")
