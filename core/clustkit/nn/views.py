"""View generators that plugins configure rather than rewrite.

A view generator's ``make_views`` gives named training views of a batch, or the evaluation view
``"eval"``. It declares the names of its training views in ``view_names``, which losses check their
view pairs against when the run is built (docs/api.md).

* ``TensorAffineViews``: each view is one batched random affine + erasing + noise call.
* ``PipelineViews``: CC's weak SimCLR-style pipeline (``augment.weak_pipeline``), batched with
  each image's own random parameters; the evaluation view is the image resized to the crop size
  (normalised when the views are).
  CC's ``cc_weak`` and DigPro's ``digpro_simclr`` differ only in their defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from clustkit.nn.augment import TensorAffine, normalize_batch, weak_pipeline

if TYPE_CHECKING:
    from clustkit.engine.context import BuildContext, RunContext


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a batch to size×size; a no-op when it already is."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class TensorAffineViews:
    """Views made by one batched affine/erasing/noise call each; the evaluation view is the image."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.view_names = list(cfg.names)
        self.aug = TensorAffine(**cfg.model_dump(exclude={"name", "names"}))

    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if not train:
            return {"eval": images}
        return {name: self.aug(images) for name in self.view_names}


class PipelineViews:
    """Views ``cfg.names`` from ``weak_pipeline(size, channels, strength, blur, crop_scale, normalize)``."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.view_names = list(cfg.names)
        self.size = cfg.size or ctx.image_size[0]
        self.normalize = cfg.normalize
        self.transform = weak_pipeline(self.size, ctx.in_channels, cfg.strength, cfg.blur, tuple(cfg.crop_scale),
                                       cfg.normalize)

    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if train:
            return {name: self.transform(images) for name in self.view_names}
        x = resize_square(images, self.size)
        return {"eval": normalize_batch(x) if self.normalize else x}
