"""SACC's view generator: weak views and the strong view (imported only when a recipe builds it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clustkit import BuildContext, RunContext
from clustkit.nn.augment import TensorAffine, normalize_batch, simclr_augment, weak_pipeline
from clustkit.nn.views import resize_square

from .randaugment import RandAugment


def strong_base_pipeline(size: int, channels: int, jitter: tuple[float, float, float, float], blur: bool,
                         crop_scale: tuple[float, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """SACC's strong view before RandAugment: RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    grayscale p=0.2, Gaussian blur sigma~U(0.1, 2) p=0.5, horizontal flip (in the reference's order).
    Colour ops are skipped for 1-channel images."""
    # PIL's GaussianBlur(radius=sigma) is not truncated by a kernel size: cover +-3 sigma_max
    kernel = min(13, size - 1 if size % 2 == 0 else size) if blur else None
    return simclr_augment(size, channels, crop_scale, jitter, blur_kernel=kernel, flip_last=True)


class SACCViews:
    """Weak views (``weak_names``) and strong views (``strong_names``); evaluation view: the image."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        overlap = set(cfg.weak_names) & set(cfg.strong_names)
        if (overlap or len(set(cfg.weak_names)) != len(cfg.weak_names)
                or len(set(cfg.strong_names)) != len(cfg.strong_names)):
            raise ctx.error("", f"view names must be unique, got weak_names={cfg.weak_names} and "
                            f"strong_names={cfg.strong_names}.")
        self.cfg = cfg
        self.size = cfg.size or ctx.image_size[0]
        channels = ctx.in_channels
        self.weak_names = list(cfg.weak_names)
        self.strong_names = list(cfg.strong_names)
        self.affine = TensorAffine(**cfg.affine.model_dump())
        self.weak_kind = cfg.weak
        self.weak = weak_pipeline(self.size, channels, cfg.strength, cfg.blur, tuple(cfg.crop_scale), False) \
            if cfg.weak == "cc_weak" else None
        self.base_kind = cfg.strong_base or ("sacc" if cfg.weak == "cc_weak" else "tensor_affine")
        self.strong_base = strong_base_pipeline(self.size, channels, tuple(cfg.strong_jitter), cfg.strong_blur,
                                                tuple(cfg.crop_scale)) if self.base_kind == "sacc" else None
        self.randaugment = RandAugment(cfg.ops, cfg.n_ops, cfg.max_magnitude, cfg.op_p, channels)
        self.normalize = cfg.normalize

    @property
    def view_names(self) -> list[str]:
        return self.weak_names + self.strong_names

    def weak_view(self, images: torch.Tensor) -> torch.Tensor:
        if self.weak is not None:
            return self.weak(images)
        return self.affine(resize_square(images, self.size))

    def strong_view(self, images: torch.Tensor) -> torch.Tensor:
        x = self.strong_base(images) if self.strong_base is not None else self.affine(resize_square(images, self.size))
        return self.randaugment(x)

    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if not train:
            x = resize_square(images, self.size)
            return {"eval": normalize_batch(x) if self.normalize == "all" else x}
        views = {name: self.weak_view(images) for name in self.weak_names}
        views.update({name: self.strong_view(images) for name in self.strong_names})
        if self.normalize != "none":
            for name in (self.view_names if self.normalize == "all" else self.strong_names):
                views[name] = normalize_batch(views[name])
        return views

