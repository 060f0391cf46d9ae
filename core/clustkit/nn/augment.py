"""Augmentations on batches of tensors (B×C×H×W floats in [0, 1], on the run device).

Every augmentation here draws its own random parameters for each image of a batch and applies
them in a few batched calls, never image by image: on a CPU the views cost a fraction of the
model, and on a GPU a batch is a handful of kernels rather than thousands.

* ``TensorAffine``: batched random affine + erasing + noise, one kernel call per batch. It is
  the fast path for tiny images (digits, USPS, MNIST) and runs on a GPU unchanged.
* ``simclr_augment``: the SimCLR-style crop / flip / colour jitter / grey / blur chain that CC's
  weak view, DigPro's views and SACC's strong view share (docs/methods/cc.md), from kornia's
  augmentation modules; ``weak_pipeline`` is CC's weak view built from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def simclr_augment(size: int, channels: int, crop_scale: tuple[float, float],
                   jitter: tuple[float, float, float, float], jitter_p: float = 0.8, grey_p: float = 0.2,
                   blur_kernel: int | None = None, flip_last: bool = False) -> torch.nn.Sequential:
    """RandomResizedCrop to ``size`` (ratio 3/4-4/3), horizontal flip p=0.5, colour jitter
    (brightness, contrast, saturation, hue) with p=``jitter_p``, grey p=``grey_p``, and a Gaussian
    blur (sigma ~ U(0.1, 2), p=0.5) when ``blur_kernel`` is given; the flip comes last when
    ``flip_last`` (SACC's order). Colour ops are skipped for one-channel images.

    kornia's modules draw each image's parameters from torch's global RNG (so a run's seed fixes
    its views) and apply them batched. One difference from torchvision's per-image pipeline:
    kornia draws the order of the four jitter steps once per batch, not once per image.
    """
    import kornia.augmentation as K

    flip = K.RandomHorizontalFlip()
    ops: list[torch.nn.Module] = [K.RandomResizedCrop((size, size), scale=crop_scale, cropping_mode="resample")]
    if not flip_last:
        ops.append(flip)
    if channels == 3:
        ops += [K.ColorJitter(*jitter, p=jitter_p), K.RandomGrayscale(p=grey_p)]
    if blur_kernel is not None and blur_kernel >= 3:
        ops.append(K.RandomGaussianBlur((blur_kernel, blur_kernel), (0.1, 2.0), p=0.5))
    if flip_last:
        ops.append(flip)
    return torch.nn.Sequential(*ops)


def weak_pipeline(size: int, channels: int, strength: float = 0.5, blur: bool = False,
                  crop_scale: tuple[float, float] = (0.08, 1.0),
                  normalize: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """CC's weak view of a batch: RandomResizedCrop, flip, colour jitter (0.8s, 0.8s, 0.8s, 0.2s)
    with p=0.8, grayscale p=0.2, Gaussian blur p=0.5 (ImageNet-10/Dogs only), no normalisation by
    default (CC passes no mean/std)."""
    s = strength
    aug = simclr_augment(size, channels, crop_scale, (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                         blur_kernel=max(3, int(0.1 * size) // 2 * 2 + 1) if blur else None)
    if not normalize:
        return aug
    return lambda x: normalize_batch(aug(x))


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    if x.shape[1] != len(mean):
        return x
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
