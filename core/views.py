"""View generators that plugins configure rather than rewrite.

``PipelineViews`` applies CC's weak SimCLR-style pipeline (``clustkit.augment.weak_pipeline``)
image by image to make each named training view; the evaluation view is the image resized to
the crop size (and normalised when the views are). CC's ``cc_weak`` and DigPro's
``digpro_simclr`` differ only in their defaults, so both are this class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clustkit import hookimpl
from clustkit.augment import normalize_batch, per_image, weak_pipeline
from clustkit.engine.context import RunContext


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a batch to size×size; a no-op when it already is."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class PipelineViews:
    """Views ``cfg.names`` from ``weak_pipeline(size, channels, strength, blur, crop_scale, normalize)``."""

    def __init__(self, cfg: Any, ctx: RunContext):
        self.names = list(cfg.names)
        self.size = cfg.size or ctx.image_size[0]
        self.normalize = cfg.normalize
        self.transform = weak_pipeline(self.size, ctx.in_channels, cfg.strength, cfg.blur, tuple(cfg.crop_scale),
                                       cfg.normalize)

    @hookimpl
    def make_views(self, images: torch.Tensor, train: bool, ctx: RunContext) -> dict[str, torch.Tensor]:
        if train:
            return {name: per_image(self.transform, images) for name in self.names}
        x = resize_square(images, self.size)
        return {"eval": normalize_batch(x) if self.normalize else x}
