"""CC: Contrastive Clustering (Li et al., AAAI 2021), the common ancestor of the other methods.

Provides CC's two heads, its instance- and cluster-level contrastive losses and its weak
augmentation. Follows the authors' code where paper and code differ (methods.md §1):
the entropy term is ``log K - H(p)`` per view, as in the code (the paper's formula has a
mistake the author acknowledged in issue #4). See docs/plugins/cc.md.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import hookimpl
from clustkit.registry import ComponentConfig, LossConfig, Registry

__version__ = "0.1.0"
F = "clustkit_cc.components:"
Pair = tuple[str, str]


class InstanceHeadConfig(ComponentConfig):
    hidden: int = Field(512, ge=1, description="CC: Linear(512→512) → ReLU → Linear(512→128)")
    out_dim: int = Field(128, ge=2)


class ClusterHeadConfig(ComponentConfig):
    hidden: int = Field(512, ge=1, description="CC: Linear(512→512) → ReLU → Linear(512→K) → softmax")


class InstanceContrastConfig(LossConfig):
    head: str = "instance"
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1)
    temperature: float = Field(0.5, gt=0)


class ClusterContrastConfig(LossConfig):
    head: str = "cluster"
    pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")], min_length=1)
    temperature: float = Field(1.0, gt=0)
    entropy_weight: float = Field(1.0, ge=0, description="weight of log K - H(p) per view")


class WeakViewsConfig(ComponentConfig):
    names: list[str] = Field(default_factory=lambda: ["weak1", "weak2"], min_length=1)
    size: int | None = Field(None, ge=4, description="crop size; default: the dataset's image size")
    strength: float = Field(0.5, ge=0, description="colour-jitter s: 0.5 CIFAR/Tiny-ImageNet, 1.0 ImageNet-10/Dogs/STL-10")
    blur: bool = Field(False, description="Gaussian blur p=0.5 (CC uses it for ImageNet-10/Dogs)")
    crop_scale: tuple[float, float] = (0.08, 1.0)
    normalize: bool = Field(False, description="ImageNet mean/std; CC passes none")


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("head", "cc_instance", F + "build_instance_head", InstanceHeadConfig,
                 doc="CC instance projector: MLP to 128-d, L2-normalised")
    registry.add("head", "cc_cluster", F + "build_cluster_head", ClusterHeadConfig,
                 doc="CC cluster projector: MLP to K, softmax")
    registry.add("loss", "instance_contrast", F + "InstanceContrast", InstanceContrastConfig,
                 doc="NT-Xent over view pairs (tau 0.5)")
    registry.add("loss", "cluster_contrast", F + "ClusterContrast", ClusterContrastConfig,
                 doc="column-wise cluster contrast + entropy (tau 1.0)")
    registry.add("views", "cc_weak", "clustkit.views:PipelineViews", WeakViewsConfig,
                 doc="CC's weak SimCLR-style views (crop, flip, jitter, grey, blur)")
