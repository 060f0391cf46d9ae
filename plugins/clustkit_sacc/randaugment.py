"""SACC's RandAugment (FixMatch op pool, docs/methods/sacc.md) on batches, with torchvision v2 ops.

For every image: ``n_ops`` ops drawn with replacement from the pool, each with an integer
magnitude v ~ randint(1, max_magnitude) (SACC: 1..9) and applied with probability ``p``.
Parameters follow the FixMatch table SACC uses (continuous = v * max / 10 + bias):

=============  =========================================  ==============================
op             parameter                                  torchvision v2 functional op
=============  =========================================  ==============================
AutoContrast   -                                          ``autocontrast``
Brightness     factor 0.9 v/10 + 0.05                     ``adjust_brightness``
Color          factor 0.9 v/10 + 0.05                     ``adjust_saturation`` (RGB only)
Contrast       factor 0.9 v/10 + 0.05                     ``adjust_contrast``
Equalize       -                                          ``equalize``
Identity       -                                          -
Posterize      bits int(4 v/10) + 4                       ``posterize``
Rotate         +-int(30 v/10) degrees                     ``rotate``
Sharpness      factor 0.9 v/10 + 0.05                     ``adjust_sharpness``
ShearX/Y       +-0.3 v/10 shear factor (atan in degrees)  ``affine(shear=...)``
Solarize       threshold (256 - int(256 v/10)) / 255      ``solarize``
TranslateX/Y   +-int(0.3 v/10 * width/height) pixels      ``affine(translate=...)``
=============  =========================================  ==============================

All randomness (op, magnitude, sign, apply) is drawn up front from torch's global RNG, which
the run seeds, so a seed fixes the views. Rather than looping image by image, each of the
``n_ops`` slots groups the images that drew the same (op, magnitude, sign) and calls the v2 op
once per group on that sub-batch: identical result, far fewer calls on small images.
Geometric ops fill with 0 and use nearest interpolation (PIL's defaults in FixMatch); shears
and rotations are about the image centre (torchvision) rather than PIL's top-left corner.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as TF

ENHANCE = {"Brightness": TF.adjust_brightness, "Color": TF.adjust_saturation, "Contrast": TF.adjust_contrast,
           "Sharpness": TF.adjust_sharpness}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
RGB_ONLY = {"Color"}


def op_args(name: str, v: int, sign: int, h: int, w: int) -> tuple | None:
    """The op's concrete argument for magnitude ``v`` and ``sign`` on an h x w image; None = no-op."""
    if name == "Identity":
        return None
    if name in ("AutoContrast", "Equalize"):
        return ()
    if name in ENHANCE:
        return (0.9 * v / 10 + 0.05,)
    if name == "Posterize":
        return (v * 4 // 10 + 4,)
    if name == "Solarize":
        return ((256 - v * 256 // 10) / 255.0,)
    if name == "Rotate":
        return (float(sign * (v * 30 // 10)),)
    if name in ("ShearX", "ShearY"):
        deg = sign * math.degrees(math.atan(0.3 * v / 10))
        return ([deg, 0.0] if name == "ShearX" else [0.0, deg],)
    if name in ("TranslateX", "TranslateY"):
        px = sign * (3 * v * (w if name == "TranslateX" else h) // 100)
        if px == 0:
            return None  # less than a pixel on a small image
        return ([px, 0] if name == "TranslateX" else [0, px],)
    raise ValueError(f"unknown RandAugment op {name!r}")


def call_op(name: str, x: torch.Tensor, args: tuple) -> torch.Tensor:
    """Run a torchvision v2 functional op with the arguments ``op_args`` gave."""
    if name == "AutoContrast":
        return TF.autocontrast(x)
    if name == "Equalize":
        return TF.equalize(x)
    if name in ENHANCE:
        return ENHANCE[name](x, args[0])
    if name == "Posterize":
        return TF.posterize(x, args[0])
    if name == "Solarize":
        return TF.solarize(x, args[0])
    if name == "Rotate":
        return TF.rotate(x, args[0])
    if name in ("ShearX", "ShearY"):
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=args[0])
    if name in ("TranslateX", "TranslateY"):
        return TF.affine(x, angle=0.0, translate=args[0], scale=1.0, shear=[0.0, 0.0])
    raise ValueError(f"unknown RandAugment op {name!r}")


def apply_op(name: str, x: torch.Tensor, v: int, sign: int = 1) -> torch.Tensor:
    """Apply one op with integer magnitude ``v`` (and sign, for geometric ops) to a float batch in [0, 1]."""
    args = op_args(name, v, sign, x.shape[-2], x.shape[-1])
    return x if args is None else call_op(name, x, args).clamp(0, 1)


class RandAugment:
    """Batched FixMatch-style RandAugment: ``n_ops`` ops per image, each applied with prob ``p``."""

    def __init__(self, ops: Sequence[str], n_ops: int = 5, max_magnitude: int = 9, p: float = 0.5,
                 channels: int = 3):
        self.ops = [op for op in ops if channels == 3 or op not in RGB_ONLY]
        self.n_ops = n_ops if self.ops else 0
        self.max_magnitude = max_magnitude
        self.p = p
        self._tables: dict[tuple[int, int], tuple[torch.Tensor, list[tuple[str, tuple]]]] = {}

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """The random draws for a batch (B x n_ops each), from torch's global RNG."""
        shape = (batch, self.n_ops)
        op = torch.randint(len(self.ops), shape) if self.ops else torch.zeros(shape, dtype=torch.long)
        mag = torch.randint(1, self.max_magnitude + 1, shape)
        sign = torch.randint(0, 2, shape)  # 0: negative, 1: positive (geometric ops only)
        apply = torch.rand(shape) < self.p
        return {"op": op, "mag": mag, "sign": sign, "apply": apply}

    def _table(self, h: int, w: int) -> tuple[torch.Tensor, list[tuple[str, tuple]]]:
        """(op, v, sign) -> id of its distinct concrete call (-1 = no-op), and the calls by id."""
        if (h, w) not in self._tables:
            ids = torch.full((len(self.ops), self.max_magnitude + 1, 2), -1, dtype=torch.long)
            calls: list[tuple[str, tuple]] = []
            seen: dict[str, int] = {}
            for i, name in enumerate(self.ops):
                for v in range(1, self.max_magnitude + 1):
                    for s in (0, 1):
                        args = op_args(name, v, 1 if (s or name not in SIGNED) else -1, h, w)
                        if args is None:
                            continue
                        key = repr((name, args))
                        if key not in seen:
                            seen[key] = len(calls)
                            calls.append((name, args))
                        ids[i, v, s] = seen[key]
            self._tables[(h, w)] = (ids, calls)
        return self._tables[(h, w)]

    def __call__(self, x: torch.Tensor, draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.n_ops == 0 or x.shape[0] == 0:
            return x
        d = draws if draws is not None else self.sample(x.shape[0])
        ids, calls = self._table(x.shape[-2], x.shape[-1])
        call_id = torch.where(d["apply"], ids[d["op"], d["mag"], d["sign"]], torch.full_like(d["op"], -1))
        x = x.clone()
        for slot in range(self.n_ops):
            col = call_id[:, slot]
            rows = (col >= 0).nonzero().flatten()
            if rows.numel() == 0:
                continue
            order = torch.argsort(col[rows], stable=True)
            rows = rows[order]
            values, counts = torch.unique_consecutive(col[rows], return_counts=True)
            for cid, group in zip(values.tolist(), rows.split(counts.tolist())):
                name, args = calls[cid]
                idx = group.to(x.device)
                x[idx] = call_op(name, x[idx], args).clamp_(0, 1)
        return x
