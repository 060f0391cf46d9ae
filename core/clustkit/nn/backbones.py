"""Backbones: ResNets with an ImageNet or CIFAR stem, any timm model, and a small CNN.

Each returns an ``nn.Module`` mapping B×C×H×W to B×``out_dim`` features (no classifier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clustkit.nn.augment import normalize_batch
from clustkit.nn.configs import parse_train
from clustkit.nn.weights import Frozen, load_file


class SmallCNN(nn.Module):
    """Four conv layers and a linear layer, for tiny images (8×8 digits, 16×16 USPS, 28×28 MNIST).

    Two 3×3 conv blocks, a 2×2 max-pool, two more blocks, global average pooling, then a
    linear layer: enough capacity for digits while a 150-epoch run stays within a minute on CPU.
    """

    def __init__(self, in_channels: int, width: int = 32, out_dim: int = 256):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class _Trainable(nn.Module):
    """A backbone whose ``train`` setting ("all", "none", "last:N") survives ``.train()`` calls.

    Fully frozen, its forward pass runs without autograd and its BatchNorm statistics stay fixed."""

    net: nn.Module
    frozen: Frozen | None = None
    input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) of the input
    input_resize: tuple[int, float, str] | None = None  # (size, crop_pct, interpolation)

    def set_input_norm(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Normalise the [0, 1] input with a pretrained model's own statistics (other channel counts,
        such as grey: their channel means), as the first operation of the forward pass."""
        self.input_stats = (tuple(mean), tuple(std))

    def set_input_size(self, size: int, crop_pct: float, interpolation: str) -> None:
        """Resize inputs of another size as timm's evaluation transform does: to ``size / crop_pct``
        (``interpolation``), then the centre ``size``×``size``. Inputs already that size pass as they
        are (views that crop at the model's size chose their own framing)."""
        self.input_resize = (size, crop_pct, interpolation)

    @property
    def normalizes_input(self) -> bool:
        return self.input_stats is not None

    def _stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) for ``channels`` input channels (other counts, such as grey: the channel means)."""
        if self.input_stats is None:
            return None
        mean, std = self.input_stats
        if channels != len(mean):
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        return mean, std

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise, then resize: the interpolation is linear with weights summing to one, so the
        order does not change the result, and normalising the small image costs a fraction. The
        resized image is clamped to the normalised [0, 1] range, as resizing 8-bit images is."""
        stats = self._stats(x.shape[1])
        if stats is not None:
            x = normalize_batch(x, *stats)
        if self.input_resize is None or x.shape[-2:] == (self.input_resize[0],) * 2:
            return x
        size, crop_pct, mode = self.input_resize
        scaled = max(size, int(size / crop_pct))  # timm: floor(size / crop_pct)
        x = F.interpolate(x, size=(scaled, scaled), mode=mode, align_corners=False,
                          antialias=scaled < x.shape[-1])  # antialiasing only matters when shrinking
        top = (scaled - size) // 2
        x = x[..., top:top + size, top:top + size]
        if stats is None:
            return x.clamp_(0.0, 1.0)
        lo = normalize_batch(torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device), *stats)
        hi = normalize_batch(torch.ones(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device), *stats)
        return torch.clamp(x, lo, hi)

    def _freeze(self, train: str) -> None:
        last = parse_train(train)
        self.frozen = None if last is None else Frozen(self.net, last)
        self.train(self.training)

    def train(self, mode: bool = True) -> _Trainable:
        super().train(mode)
        if self.frozen is not None:
            self.frozen.keep_eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        if self.frozen is not None and self.frozen.all_frozen:
            with torch.no_grad():
                return self.net(x)
        return self.net(x)


class TorchvisionResNet(_Trainable):
    """torchvision ResNet without its classifier.

    ``stem="imagenet"`` keeps the 7×7/2 conv and max-pool (CC, SACC, DCHL, IcicleGCN at 224 px);
    ``stem="cifar"`` uses a 3×3/1 conv and no max-pool (DigPro/ProPos at 32-96 px). ``weights``:
    "none", "hub" (torchvision's DEFAULT weights) or a file, loaded into the network as built
    (stem included) before its classifier is dropped (clustkit.nn.weights).
    """

    def __init__(self, depth: int, in_channels: int, stem: Literal["imagenet", "cifar"], weights: str = "none",
                 key_map: dict[str, str] | str | None = None, train: str = "all", recipe_file: str | None = None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights="DEFAULT" if weights == "hub" else None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        if weights not in ("none", "hub"):
            load_file(net, weights, key_map, "fc", recipe_file)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self._freeze(train)


class TimmBackbone(_Trainable):
    """Any timm model by name, as a feature extractor (``num_classes=0``). ``weights``: "none",
    "hub" (timm's pretrained download) or a file, which must fit the model exactly
    (clustkit.nn.weights; grey input goes through timm's loader, which adapts the first conv)."""

    def __init__(self, model_name: str, in_channels: int, pretrained: bool = False, weights: str = "none",
                 key_map: dict[str, str] | str | None = None, train: str = "all", recipe_file: str | None = None,
                 **kwargs: object):
        super().__init__()
        import timm

        hub = pretrained or weights == "hub"
        if weights in ("none", "hub"):
            net = timm.create_model(model_name, pretrained=hub, num_classes=0, in_chans=in_channels, **kwargs)
        elif key_map is None:
            net = self._timm_file(model_name, in_channels, weights, recipe_file, kwargs)
        else:
            net = timm.create_model(model_name, pretrained=False, in_chans=in_channels, **kwargs)
            load_file(net, weights, key_map, net.pretrained_cfg.get("classifier", ""), recipe_file)
            net.reset_classifier(0)
        self.net = net
        self.out_dim = int(net.num_features)
        self._freeze(train)

    @staticmethod
    def _timm_file(model_name: str, in_channels: int, weights: str, recipe_file: str | None,
                   kwargs: dict[str, object]) -> nn.Module:
        """The file must fit the RGB model exactly (checked and loaded here); grey or other input
        channels then go through timm's own loader, which adapts the first convolution."""
        import timm

        net = timm.create_model(model_name, pretrained=False, **kwargs)
        load_file(net, weights, None, net.pretrained_cfg.get("classifier", ""), recipe_file)
        if in_channels == 3:
            net.reset_classifier(0)
            return net
        return timm.create_model(model_name, pretrained=True, num_classes=0, in_chans=in_channels,
                                 pretrained_cfg_overlay={"file": str(Path(weights).expanduser())}, **kwargs)
