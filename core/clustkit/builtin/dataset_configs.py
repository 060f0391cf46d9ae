"""The ``[data]`` (and ``[unlabeled]``) options of each built-in dataset: one config model per
``data.name``, holding exactly the options that dataset's loader in :mod:`clustkit.data` takes.

The registry validates a dataset section with the model registered under its ``name``, so these
models form a union keyed by ``data.name``: ``clustkit check`` refuses an option the chosen dataset
does not take (``superclasses`` on MNIST) as any unknown key, instead of the loader at build time.
Torch-free: ``clustkit.builtin`` imports it to list the plugins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clustkit import ComponentConfig

Split = Literal["all", "train", "test"]
Channels = Literal[1, 3]

NATIVE_SIZE = "resize once, in memory, to this size (shorter side, then centre crop); unset: the native size"
NATIVE_CHANNELS = "convert to 1 (grey) or 3 (RGB) channels; unset: the dataset's own"


class Imbalance(BaseModel):
    """A long-tailed subsample of a labelled dataset (clustkit.data.imbalance, docs/data.md)."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(10.0, ge=1, allow_inf_nan=False, description="items of the largest class / items of "
                         "the smallest")
    profile: Literal["exponential", "step"] = Field("exponential", description="class c of C keeps n_max · "
                                                    "ratio^(-c/(C-1)); 'step': half the classes n_max, half "
                                                    "n_max / ratio")
    seed: int = Field(0, description="which items each class keeps")


IMBALANCE = "subsample to a long-tailed profile, e.g. {ratio = 10}; unset: the dataset as it is"


class DatasetOptions(ComponentConfig):
    """What every dataset read from disk takes: where it is, which split, at what size."""

    root: str | None = Field(None, description="the dataset's folder (or file); '~' and $VARS are expanded")
    split: Split = Field("all", description="'all' pools train and test (the clustering protocol); 'train' or "
                         "'test' reads one")
    image_size: int | None = Field(None, ge=4, description=NATIVE_SIZE)
    imbalance: Imbalance | None = Field(None, description=IMBALANCE)


class ArrayDatasetOptions(DatasetOptions):
    """Datasets stored as arrays: read whole into memory, at their native channels unless asked."""

    channels: Channels | None = Field(None, description=NATIVE_CHANNELS)


class FileDatasetOptions(DatasetOptions):
    """Datasets of image files: decoded at a fixed size and channels, in memory or from disk every epoch."""

    image_size: int | None = Field(None, ge=4, description="decode the images at this size (shorter side, then "
                                   "centre crop); unset: 224")
    channels: Channels = Field(3, description="decode as 1 (grey) or 3 (RGB) channels")
    in_memory: Literal["auto"] | bool = Field(
        "auto", description="decode once into memory (true), read from disk every epoch in DataLoader workers "
        "(false: data larger than memory), or true when the decoded images take at most a quarter of the "
        "available memory ('auto')")


class DigitsConfig(ComponentConfig):
    """scikit-learn's digits: 1,797 8×8 grey images, 10 classes, embedded (no root)."""

    name: Literal["digits"] = Field(description="scikit-learn's digits")
    split: Literal["all"] = Field("all", description="digits has no train/test split")
    image_size: int | None = Field(None, ge=4, description=NATIVE_SIZE)
    channels: Channels | None = Field(None, description=NATIVE_CHANNELS)
    imbalance: Imbalance | None = Field(None, description=IMBALANCE)


class MnistConfig(ArrayDatasetOptions):
    """MNIST: 70,000 28×28 grey digits (train 60k + test 10k)."""

    name: Literal["mnist"] = Field(description="MNIST (torchvision MNIST/raw or the idx files)")


class FashionMnistConfig(ArrayDatasetOptions):
    """Fashion-MNIST: 70,000 28×28 grey clothes (train 60k + test 10k)."""

    name: Literal["fashion_mnist"] = Field(description="Fashion-MNIST (torchvision FashionMNIST/raw or the idx files)")


class KmnistConfig(ArrayDatasetOptions):
    """Kuzushiji-MNIST: 70,000 28×28 grey characters (train 60k + test 10k)."""

    name: Literal["kmnist"] = Field(description="Kuzushiji-MNIST (torchvision KMNIST/raw or the idx files)")


class UspsConfig(ArrayDatasetOptions):
    """USPS: 9,298 16×16 grey digits (train 7,291 + test 2,007)."""

    name: Literal["usps"] = Field(description="USPS (usps.h5 or torchvision's bz2 files)")


class Coil20Config(ArrayDatasetOptions):
    """COIL-20: 1,440 32×32 grey images, 20 objects × 72 poses."""

    name: Literal["coil20"] = Field(description="COIL-20 (COIL20.mat)")
    split: Literal["all"] = Field("all", description="COIL-20 has no train/test split")


class Cifar10Config(ArrayDatasetOptions):
    """CIFAR-10: 60,000 32×32 RGB (train 50k + test 10k), from the pickles or a JPEG copy."""

    name: Literal["cifar10"] = Field(description="CIFAR-10 (torchvision pickles, or the JPEG tree or archive)")
    cache_dir: str | None = Field(None, description="where the decoded JPEG copy is cached; unset: "
                                  "$CLUSTKIT_CACHE_DIR or ~/.cache/clustkit")


class Cifar100Config(ArrayDatasetOptions):
    """CIFAR-100: 60,000 32×32 RGB (train 50k + test 10k), 20 superclasses or 100 classes."""

    name: Literal["cifar100"] = Field(description="CIFAR-100 (torchvision pickles)")
    superclasses: bool = Field(True, description="the 20 coarse labels (the papers' protocol); false: the 100 fine "
                               "ones")


class Stl10Config(ArrayDatasetOptions):
    """STL-10: 96×96 RGB (train 5k + test 8k), and 100k unlabelled images."""

    name: Literal["stl10"] = Field(description="STL-10 (torchvision stl10_binary/)")
    split: Literal["all", "train", "test", "unlabeled"] = Field(
        "all", description="'all' pools train and test; 'train' or 'test' reads one; 'unlabeled' only the 100k "
        "unlabelled images (the [unlabeled] pass of CC's protocol)")
    unlabeled: bool = Field(False, description="append the 100k unlabelled images (label -1)")


class ImageFolderConfig(FileDatasetOptions):
    """Any folder of images: class subfolders give labels, a flat folder is unlabelled."""

    name: Literal["image_folder"] = Field(description="a folder of images (torchvision ImageFolder layout or flat)")
    split: Split = Field("all", description="'train' or 'test' reads the train/ or test/ (val/) subfolder; 'all' "
                         "pools them, or reads the folder when it has none")
    classes: list[str] | None = Field(None, description="the class subfolders to keep, in this order; unset: all")


class Imagenet10Config(FileDatasetOptions):
    """ImageNet-10: the 10 ImageNet classes of the clustering papers (13,000 training images)."""

    name: Literal["imagenet10"] = Field(description="ImageNet-10 (the 10 WordNet-id folders)")
    split: Split = Field("all", description="'all' and 'train' read the training images (the papers' protocol); "
                         "'test' those under val/ or test/")


class ImagenetDogsConfig(FileDatasetOptions):
    """ImageNet-Dogs: the 15 dog breeds of the clustering papers (19,500 training images)."""

    name: Literal["imagenet_dogs"] = Field(description="ImageNet-Dogs (the 15 WordNet-id folders)")
    split: Split = Field("all", description="'all' and 'train' read the training images (the papers' protocol); "
                         "'test' those under val/ or test/")


class TinyImagenetConfig(FileDatasetOptions):
    """Tiny-ImageNet: 200 classes of 64×64 images (official layout)."""

    name: Literal["tiny_imagenet"] = Field(description="Tiny-ImageNet (train/<wnid>/images, val/)")
    split: Split = Field("all", description="'all' and 'train' read the 100,000 training images (the papers' "
                         "protocol); 'test' the 10,000 of val/")
    image_size: int | None = Field(None, ge=4, description="decode the images at this size (shorter side, then "
                                   "centre crop); unset: 64, the native size")


class WebdatasetConfig(FileDatasetOptions):
    """WebDataset tar shards, read by random access: data larger than memory."""

    name: Literal["webdataset"] = Field(description="WebDataset tar shards")
    root: str | None = Field(None, description="a folder of .tar shards (or of train/ and test/ subfolders of "
                             "them), a glob (shards/*.tar) or a brace pattern (shards/train-{000000..000099}.tar)")
    split: Split = Field("all", description="'train' or 'test' reads the train/ or test/ (val/) subfolder of the "
                         "root; 'all' the shards in the root, else those of its subfolders pooled")


#: ``data.name`` -> its config model (the registry's dataset components, in listing order).
DATASET_CONFIGS: dict[str, type[ComponentConfig]] = {
    "digits": DigitsConfig,
    "mnist": MnistConfig,
    "fashion_mnist": FashionMnistConfig,
    "kmnist": KmnistConfig,
    "usps": UspsConfig,
    "coil20": Coil20Config,
    "cifar10": Cifar10Config,
    "cifar100": Cifar100Config,
    "stl10": Stl10Config,
    "image_folder": ImageFolderConfig,
    "imagenet10": Imagenet10Config,
    "imagenet_dogs": ImagenetDogsConfig,
    "tiny_imagenet": TinyImagenetConfig,
    "webdataset": WebdatasetConfig,
}
