"""SACC: Strongly Augmented Contrastive Clustering (Deng et al., Pattern Recognition 2023).

CC with a third, strongly augmented view: two weak views (CC's pipeline) and one strong view
(fixed colour jitter, blur, flip, then 5 RandAugment ops), all through the same network.
Instance contrast runs on weak-weak and weak-strong pairs, cluster contrast on all three
pairs, L = L_ins + sigma * L_clu (docs/methods/sacc.md). The losses are CC's two contrasts with
SACC's pairs as defaults (the authors' ``train.py``); the pairs are recipe keys. See
docs/plugins/sacc.md for every decision.

This module holds only pydantic configs and the registration; the view generator (torch) is in
``clustkit_sacc.views`` and ``clustkit_sacc.randaugment``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clustkit import (
    ClusterContrastConfig,
    ComponentConfig,
    InstanceContrastConfig,
    Pair,
    Registry,
    hookimpl,
    with_defaults,
)
from clustkit.nn.configs import AffineParams

#: FixMatch-style RandAugment pool used by SACC's strong view (docs/methods/sacc.md).
OP_NAMES = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate",
            "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
OpName = Literal["AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate",
                 "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY"]

# train.py: instance (i, j) + (j, s); cluster (i, j) + (i, s) + (j, s)
TRAIN_PY_INSTANCE_PAIRS: list[Pair] = [("weak1", "weak2"), ("weak2", "strong")]
TRAIN_PY_CLUSTER_PAIRS: list[Pair] = [("weak1", "weak2"), ("weak1", "strong"), ("weak2", "strong")]


class SACCViewsConfig(ComponentConfig):
    weak: Literal["cc_weak", "tensor_affine"] = Field(
        "cc_weak", description="weak views: CC's SimCLR-style pipeline (paper) or core's TensorAffine (tiny images)")
    strong_base: Literal["sacc", "tensor_affine"] | None = Field(
        None, description="geometry/colour before RandAugment: SACC's crop+jitter+grey+blur+flip, or TensorAffine; "
                          "default: 'sacc' with weak='cc_weak', 'tensor_affine' with weak='tensor_affine'")
    weak_names: list[str] = Field(default_factory=lambda: ["weak1", "weak2"])
    strong_names: list[str] = Field(default_factory=lambda: ["strong"])
    size: int | None = Field(None, ge=4, description="crop size; default: the dataset's image size")
    strength: float = Field(0.5, ge=0, description="weak colour-jitter s: 0.5 CIFAR/Tiny-ImageNet, 1.0 otherwise")
    blur: bool = Field(False, description="Gaussian blur p=0.5 in the weak views (ImageNet-10/Dogs)")
    crop_scale: tuple[float, float] = (0.08, 1.0)
    strong_jitter: tuple[float, float, float, float] = Field(
        (0.4, 0.4, 0.4, 0.1), description="strong view ColorJitter (fixed in SACC), applied with p=0.8")
    strong_blur: bool = Field(True, description="strong view Gaussian blur, sigma~U(0.1, 2), p=0.5")
    n_ops: int = Field(5, ge=0, description="RandAugment ops per image, drawn with replacement")
    max_magnitude: int = Field(9, ge=1, le=10, description="magnitude v ~ randint(1, max_magnitude)")
    op_p: float = Field(0.5, ge=0, le=1, description="probability that each drawn op is applied")
    ops: list[OpName] = Field(default_factory=lambda: list(OP_NAMES), min_length=1,
                              description="the op pool; Color is dropped for 1-channel images")
    normalize: Literal["none", "strong", "all"] = Field(
        "none", description="ImageNet mean/std: 'none' (default), 'strong' (the reference's asymmetry), "
                            "'all' (every view and the evaluation view)")
    affine: AffineParams = Field(default_factory=AffineParams)

    def view_names(self) -> tuple[str, ...]:
        """The weak views, then the strong ones, as ``SACCViews.view_names`` (checked by ``clustkit check``)."""
        return (*self.weak_names, *self.strong_names)


SACCInstanceConfig = with_defaults(InstanceContrastConfig, "SACCInstanceConfig", pairs=TRAIN_PY_INSTANCE_PAIRS)
#: ``weight`` is SACC's sigma (1; 0.5 for CIFAR-100).
SACCClusterConfig = with_defaults(ClusterContrastConfig, "SACCClusterConfig", pairs=TRAIN_PY_CLUSTER_PAIRS)


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("views", "sacc", "clustkit_sacc.views:SACCViews", SACCViewsConfig,
                 doc="two weak views + one strong view (jitter, blur, flip, 5 RandAugment ops)")
    registry.add("loss", "sacc_instance", "clustkit.losses.pair:InstanceContrast", SACCInstanceConfig,
                 doc="NT-Xent summed over weak-weak and weak-strong pairs (tau 0.5)")
    registry.add("loss", "sacc_cluster", "clustkit.losses.pair:ClusterContrast", SACCClusterConfig,
                 doc="cluster contrast + entropy summed over all view pairs (tau 1.0); weight = sigma")
