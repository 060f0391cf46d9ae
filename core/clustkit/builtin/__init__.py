"""The built-in plugin: the generic components every method builds on.

Registered through the ``clustkit`` entry point ``builtin`` and the public API, like any
third-party plugin. This module holds the config models and the registration (no torch); the
factories are import strings into ``clustkit.builtin.components``, ``clustkit.builtin.datasets`` and the
core's ``nn`` modules; each dataset's options are its model in ``clustkit.builtin.dataset_configs``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from clustkit import ComponentConfig, EvaluatorConfig, HeadOrBackbone, HeadRef, Registry, hookimpl
from clustkit.builtin.dataset_configs import DATASET_CONFIGS
from clustkit.nn.configs import FILE_SUFFIXES, TensorAffineConfig, parse_train

F = "clustkit.builtin.components:"
DATASETS = tuple(DATASET_CONFIGS)  # each name validated by its own model: options are per dataset


class SmallCNNConfig(ComponentConfig):
    width: int = Field(32, ge=4)
    out_dim: int = Field(256, ge=2)


class PretrainedOptions(ComponentConfig):
    """Weights from the hub or a file, and which part trains (clustkit.nn.weights, docs/pretrained.md)."""

    weights: str = Field("none", description='"none", "hub" (the library\'s download; needs network) or a '
                         "weights file (.safetensors, .pth, .pt, .bin)")
    key_map: dict[str, str] | Literal["order"] | None = Field(
        None, description='rename the file\'s keys: regular expression -> replacement, applied in order; or '
        '"order" to pair tensors by position (ports of the same network)')
    train: str = Field("all", description='"all", "none" (frozen: no gradients, BatchNorm statistics fixed) or '
                       '"last:N" (the last N blocks train)')
    input_norm: Literal["auto", "model", "none"] = Field(
        "auto", description='"model": the backbone normalises its [0, 1] input with the pretrained model\'s own '
        'mean/std (timm\'s pretrained config; ImageNet\'s for torchvision); "auto": "model" when weights is not '
        '"none"; "none": the input as the views give it')
    input_size: int | Literal["auto", "none"] = Field(
        "auto", description='inputs of another size are resized to this one first: "auto": the pretrained '
        "model's (timm's pretrained config; 224 for torchvision) when input_norm applies, else none")
    crop_pct: float | Literal["auto"] = Field(
        "auto", description="resize to input_size / crop_pct, then centre-crop input_size (timm's evaluation "
        'transform); "auto": the model\'s (0.875 for torchvision); 1.0: resize only')
    interpolation: Literal["auto", "bilinear", "bicubic"] = Field("auto", description="how inputs are resized; "
                                                                  '"auto": the model\'s')

    @field_validator("crop_pct")
    @classmethod
    def _crop(cls, v: float | str) -> float | str:
        if v != "auto" and not 0.1 <= float(v) <= 1.0:
            raise ValueError(f"{v!r} is not a valid choice: a fraction in [0.1, 1] or \"auto\"")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v not in ("none", "hub") and not v.endswith(FILE_SUFFIXES):
            raise ValueError(f"{v!r} is not a valid choice: \"none\", \"hub\" or a file ending in "
                             f"{', '.join(FILE_SUFFIXES)}")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: str) -> str:
        parse_train(v)
        return v


class ResNetConfig(PretrainedOptions):
    depth: Literal[18, 34, 50] = 34
    stem: Literal["imagenet", "cifar"] = "imagenet"


class TimmConfig(PretrainedOptions):
    model: str = Field(..., description="any timm model name, e.g. resnet18, vit_tiny_patch16_224")
    pretrained: bool = Field(False, description='the same as weights = "hub" (kept from 0.1)')
    kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)


class MLPHeadConfig(ComponentConfig):
    hidden: list[int] = Field(default_factory=lambda: [512])
    out_dim: int | Literal["n_clusters"] = 128
    output: Literal["none", "l2", "softmax"] = "none"
    batch_norm: bool = False


class KMeansGroupingConfig(ComponentConfig):
    backend: Literal["auto", "faiss", "torch"] = "auto"
    n_init: int = Field(3, ge=1)
    max_iter: int = Field(100, ge=1)


class HeadArgmaxConfig(EvaluatorConfig):
    head: HeadRef = "cluster"
    momentum: bool = False


class KMeansEvalConfig(EvaluatorConfig):
    features: HeadOrBackbone = Field("backbone", description="'backbone' or the name of a head")
    momentum: bool = Field(False, description="use the momentum network's features")
    spherical: bool = False


@hookimpl
def register_components(registry: Registry) -> None:
    for name, config in DATASET_CONFIGS.items():
        registry.add("dataset", name, "clustkit.builtin.datasets:build_dataset", config,
                     doc=(config.__doc__ or name).strip().splitlines()[0])
    registry.add("backbone", "small_cnn", F + "build_small_cnn", SmallCNNConfig,
                 doc="4 conv layers + linear, for tiny images")
    registry.add("backbone", "resnet", F + "build_resnet", ResNetConfig,
                 doc="torchvision ResNet-18/34/50 with ImageNet or CIFAR stem")
    registry.add("backbone", "timm", F + "build_timm", TimmConfig, doc="any timm model, num_classes=0")
    registry.add("head", "mlp", F + "build_mlp_head", MLPHeadConfig, doc="MLP projector (none/l2/softmax output)")
    registry.add("views", "tensor_affine", "clustkit.nn.views:TensorAffineViews", TensorAffineConfig,
                 doc="batched affine + erasing + noise views (tiny images, GPU-friendly)")
    registry.add("grouper", "kmeans", F + "KMeansGrouper", KMeansGroupingConfig,
                 doc="k-means through FAISS (GPU index when present) or torch")
    registry.add("evaluator", "head_argmax", F + "HeadArgmax", HeadArgmaxConfig,
                 doc="argmax of a cluster head's soft assignment")
    registry.add("evaluator", "kmeans", F + "KMeansEvaluator", KMeansEvalConfig,
                 doc="k-means on extracted features (through the grouping component)")
