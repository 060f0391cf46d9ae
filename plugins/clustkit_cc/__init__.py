"""CC: Contrastive Clustering (Li et al., AAAI 2021), the common ancestor of the other methods.

CC's instance and cluster heads, its two contrastive losses and its weak augmentation are core
building blocks (one definition each, shared with SACC, DCHL and IcicleGCN), so this plugin is
their registration under CC's names with CC's defaults. Where paper and code differ it follows
the authors' code: the entropy term is log K − H(p) per view (docs/methods/cc.md).
"""

from __future__ import annotations

from clustkit import ClusterContrastConfig, InstanceContrastConfig, Registry, hookimpl
from clustkit.nn.configs import ClusterHeadConfig, PipelineViewsConfig, ProjectionHeadConfig


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "cc_instance", "clustkit.nn.heads:build_instance_head", ProjectionHeadConfig,
                 doc="CC instance projector: MLP to 128-d, L2-normalised")
    registry.add("head", "cc_cluster", "clustkit.nn.heads:build_cluster_head", ClusterHeadConfig,
                 doc="CC cluster projector: MLP to K, softmax")
    registry.add("loss", "instance_contrast", "clustkit.losses.pair:InstanceContrast", InstanceContrastConfig,
                 doc="NT-Xent over view pairs (tau 0.5)")
    registry.add("loss", "cluster_contrast", "clustkit.losses.pair:ClusterContrast", ClusterContrastConfig,
                 doc="column-wise cluster contrast + entropy (tau 1.0)")
    registry.add("views", "cc_weak", "clustkit.nn.views:PipelineViews", PipelineViewsConfig,
                 doc="CC's weak SimCLR-style views (crop, flip, jitter, grey, blur)")
