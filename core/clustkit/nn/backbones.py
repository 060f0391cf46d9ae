"""Backbones: ResNets with an ImageNet or CIFAR stem, any timm model, and a small CNN.

Each returns an ``nn.Module`` mapping B×C×H×W to B×``out_dim`` features (no classifier).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


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


class TorchvisionResNet(nn.Module):
    """torchvision ResNet without its classifier.

    ``stem="imagenet"`` keeps the 7×7/2 conv and max-pool (CC, SACC, DCHL, IcicleGCN at 224 px);
    ``stem="cifar"`` uses a 3×3/1 conv and no max-pool (DigPro/ProPos at 32-96 px).
    """

    def __init__(self, depth: int, in_channels: int, stem: Literal["imagenet", "cifar"]):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TimmBackbone(nn.Module):
    """Any timm model by name, as a feature extractor (``num_classes=0``); no weight download
    unless ``pretrained`` is asked for."""

    def __init__(self, model_name: str, in_channels: int, pretrained: bool = False, **kwargs: object):
        super().__init__()
        import timm

        self.net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs)
        self.out_dim = int(self.net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
