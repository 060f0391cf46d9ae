"""Augmentations on batches of tensors (B×C×H×W floats in [0, 1], on the run device).

* ``TensorAffine``: batched random affine + erasing + noise, one kernel call per batch. It is
  the fast path for tiny images (digits, USPS, MNIST) and runs on a GPU unchanged.
* ``weak_pipeline``: CC's "weak" SimCLR-style pipeline (docs/methods/cc.md) from torchvision
  transforms v2, applied image by image (each image gets its own random parameters).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorAffine:
    """Random rotation/scale/translation/shear, random erasing and Gaussian noise, batched."""

    def __init__(self, degrees: float = 15.0, scale: tuple[float, float] = (0.85, 1.15),
                 translate: float = 0.1, shear: float = 10.0, erase_p: float = 0.5,
                 erase_area: tuple[float, float] = (0.05, 0.2), noise_std: float = 0.05):
        self.degrees, self.scale, self.translate, self.shear = degrees, scale, translate, shear
        self.erase_p, self.erase_area, self.noise_std = erase_p, erase_area, noise_std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(b, device=dev).uniform_(lo, hi)

        angle = uniform(-self.degrees, self.degrees) * math.pi / 180
        shear = uniform(-self.shear, self.shear) * math.pi / 180
        s = uniform(*self.scale)
        tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([cos / s, (-sin + torch.tan(shear) * cos) / s, tx], 1),
            torch.stack([sin / s, (cos + torch.tan(shear) * sin) / s, ty], 1),
        ], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.erase_p > 0:
            area = uniform(*self.erase_area) * h * w
            ratio = torch.exp(uniform(math.log(0.5), math.log(2.0)))
            eh = (area * ratio).sqrt().clamp(1, h)
            ew = (area / ratio).sqrt().clamp(1, w)
            y0 = torch.rand(b, device=dev) * (h - eh)
            x0 = torch.rand(b, device=dev) * (w - ew)
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            box = ((yy >= y0.view(b, 1, 1)) & (yy < (y0 + eh).view(b, 1, 1))
                   & (xx >= x0.view(b, 1, 1)) & (xx < (x0 + ew).view(b, 1, 1)))
            apply = (torch.rand(b, device=dev) < self.erase_p).view(b, 1, 1)
            out = out.masked_fill((box & apply).unsqueeze(1), 0.0)
        if self.noise_std > 0:
            out = (out + self.noise_std * torch.randn_like(out)).clamp(0, 1)
        return out


def weak_pipeline(size: int, channels: int, strength: float = 0.5, blur: bool = False,
                  crop_scale: tuple[float, float] = (0.08, 1.0), normalize: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """CC's weak view: RandomResizedCrop, flip, colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8,
    grayscale p=0.2, Gaussian blur p=0.5 (ImageNet-10/Dogs only), no normalisation by default
    (CC passes no mean/std). Colour ops are skipped for one-channel images."""
    from torchvision.transforms import v2

    ops: list[Callable[..., torch.Tensor]] = [
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if channels == 3:
        ops += [
            v2.RandomApply([v2.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    if blur:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    if normalize and channels == 3:
        ops.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(ops)


def per_image(transform: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a torchvision transform to each image of a batch with independent randomness."""
    return torch.stack([transform(img) for img in x])


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    if x.shape[1] != len(mean):
        return x
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
