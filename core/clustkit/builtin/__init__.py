"""The built-in plugin: the generic components every method builds on.

Registered through the ``clustkit`` entry point ``builtin`` and the public API, like any
third-party plugin. This module holds the config models and the registration (no torch); the
factories are import strings into ``clustkit.builtin.components`` and the core's ``nn`` modules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clustkit import ComponentConfig, EvaluatorConfig, HeadOrBackbone, HeadRef, Registry, hookimpl
from clustkit.nn.configs import TensorAffineConfig

F = "clustkit.builtin.components:"
DATASETS = ("digits", "mnist", "fashion_mnist", "kmnist", "usps", "coil20", "cifar10", "cifar100", "stl10",
            "image_folder", "imagenet10", "imagenet_dogs", "tiny_imagenet", "webdataset")


class DatasetConfig(ComponentConfig):
    root: str | None = Field(None, description="dataset folder (or file); ignored by digits")
    split: Literal["all", "train", "test", "unlabeled"] = Field(
        "all", description="clustering pools train and test; 'unlabeled': stl10's unlabelled split only")
    image_size: int | None = Field(None, ge=4, description="resize folder images to this size")
    superclasses: bool = Field(True, description="cifar100: the 20 coarse labels (the papers' protocol)")
    unlabeled: bool = Field(False, description="stl10: add the 100k unlabelled split")
    classes: list[str] | None = Field(None, description="image_folder: subfolders to keep, in order")
    channels: int = Field(3, ge=1, le=3, description="image_folder, webdataset: 1 = grey, 3 = RGB")
    cache_dir: str | None = Field(None, description="where extracted/decoded archives are cached")
    in_memory: Literal["auto"] | bool = Field(
        "auto", description="image files (folders, webdataset shards): decode once into memory (true), read from disk "
        "every epoch in DataLoader workers (false: data larger than memory), or true when the decoded images take at "
        "most a quarter of the available memory ('auto')")


class SmallCNNConfig(ComponentConfig):
    width: int = Field(32, ge=4)
    out_dim: int = Field(256, ge=2)


class ResNetConfig(ComponentConfig):
    depth: Literal[18, 34, 50] = 34
    stem: Literal["imagenet", "cifar"] = "imagenet"


class TimmConfig(ComponentConfig):
    model: str = Field(..., description="any timm model name, e.g. resnet18, vit_tiny_patch16_224")
    pretrained: bool = Field(False, description="download pretrained weights (needs network)")
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
    for name in DATASETS:
        registry.add("dataset", name, F + "build_dataset", DatasetConfig, doc=f"{name} (train and test pooled)")
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
