"""DCHL: Deep Clustering with Hybrid-grained contrastive and discriminative Learning
(Deng et al., IEEE TCSVT 2024).

CC's instance branch and a cluster trunk shared by a coarse-grained branch (softmax over K,
CC's cluster contrast) and a fine-grained branch (128-d, L2-normalised) that is grouped by
in-batch k-means into K_f groups; self and cross instance-group discrimination tie the
fine-grained groups to the fine and instance embeddings (docs/methods/dchl.md).

L = L_ins + L_clu + L_self + L_cross, each weight a recipe key; L_ins and L_clu are CC's two
contrasts. ``dchl_group`` rejects K_f >= batch size (the authors' K_f = 400 at batch 256 makes
every sample its own group) unless ``allow_degenerate = true``. See docs/plugins/dchl.md.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import (
    ClusterContrastConfig,
    ComponentConfig,
    HeadRef,
    InstanceContrastConfig,
    LossConfig,
    Pair,
    Registry,
    hookimpl,
)

F = "clustkit_dchl."


class CoarseHeadConfig(ComponentConfig):
    """The coarse branch: the shared cluster trunk, then Linear to K, softmax."""

    trunk: str = Field("cluster_trunk", description="heads naming the same trunk share it (DCHL's cross projector)")
    hidden: int = Field(512, ge=1, description="trunk: Linear(in -> hidden) -> ReLU")


class FineHeadConfig(CoarseHeadConfig):
    """The fine branch: the shared cluster trunk, then Linear to ``out_dim``, L2-normalised."""

    out_dim: int = Field(128, ge=2, description="fine-grained embedding size (L2-normalised)")


class GroupConfig(LossConfig):
    """L_self and L_cross over in-batch k-means groups of the fine-grained embeddings."""

    fine_head: HeadRef = "fine"
    instance_head: HeadRef = "instance"
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
    registry.add("head", "dchl_coarse", F + "heads:build_coarse_head", CoarseHeadConfig,
                 doc="shared cluster trunk -> Linear to K -> softmax (coarse-grained branch)")
    registry.add("head", "dchl_fine", F + "heads:build_fine_head", FineHeadConfig,
                 doc="shared cluster trunk -> Linear to 128 -> L2 (fine-grained branch)")
    registry.add("loss", "dchl_instance", "clustkit.losses.pair:InstanceContrast", InstanceContrastConfig,
                 doc="L_ins: NT-Xent over view pairs (tau 0.5)")
    registry.add("loss", "dchl_cluster", "clustkit.losses.pair:ClusterContrast", ClusterContrastConfig,
                 doc="L_clu: coarse-branch cluster contrast + entropy (tau 1.0)")
    registry.add("loss", "dchl_group", F + "group_loss:DCHLGroup", GroupConfig,
                 doc="L_self + L_cross: instance-group discrimination on in-batch k-means groups (tau 0.2)")
