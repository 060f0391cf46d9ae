"""SACC's RandAugment (FixMatch op pool, docs/methods/sacc.md) on batches, with kornia's ops.

For every image: ``n_ops`` ops drawn with replacement from the pool, each with an integer
magnitude v ~ randint(1, max_magnitude) (SACC: 1..9) and applied with probability ``p``.
Parameters follow the FixMatch table SACC uses (continuous = v * max / 10 + bias):

=============  =========================================  ==============================
op             parameter                                  batched op (per-image values)
=============  =========================================  ==============================
AutoContrast   -                                          ``kornia.enhance.normalize_min_max``
Brightness     factor 0.9 v/10 + 0.05                     ``adjust_brightness_accumulative``
Color          factor 0.9 v/10 + 0.05                     ``adjust_saturation_with_gray_subtraction`` (RGB)
Contrast       factor 0.9 v/10 + 0.05                     ``adjust_contrast_with_mean_subtraction``
Equalize       -                                          torchvision's batched ``equalize``
Identity       -                                          -
Posterize      bits int(4 v/10) + 4                       the 8-bit levels & a mask
Rotate         +-int(30 v/10) degrees                     one ``grid_sample`` for every
Sharpness      factor 0.9 v/10 + 0.05                     ``kornia.enhance.sharpness``
ShearX/Y       +-0.3 v/10 shear factor                    geometric op of a slot
Solarize       threshold (256 - int(256 v/10)) / 255      ``kornia.enhance.solarize``
TranslateX/Y   +-int(0.3 v/10 * width/height) pixels      (``grid_sample``, see above)
=============  =========================================  ==============================

All randomness (op, magnitude, sign, apply) is drawn up front from torch's global RNG, which
the run seeds, so a seed fixes the views. Each of the ``n_ops`` slots then makes at most one
batched call per op of the pool on the images that drew it, with each image's own parameter
(kornia's functional ops take one value per image), and one affine warp for all the slot's
geometric ops: the number of calls does not grow with the batch. The formulas are PIL's (as
torchvision implements them); geometric ops fill with 0 and use nearest interpolation (PIL's
defaults in FixMatch), about the image centre rather than PIL's top-left corner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ENHANCE = {"Brightness", "Color", "Contrast", "Sharpness"}
GEOMETRIC_INDEX = {"Rotate": 0, "ShearX": 1, "ShearY": 2, "TranslateX": 3, "TranslateY": 4}
GEOMETRIC = set(GEOMETRIC_INDEX)   # one affine warp per slot; also the ops with a random sign
RGB_ONLY = {"Color"}


def op_args(name: str, v: int, sign: int, h: int, w: int) -> tuple | None:
    """The op's concrete argument for magnitude ``v`` and ``sign`` on an h x w image; None = no-op.
    Rotations are in degrees, shears are factors (x' = x + s y), translations in pixels."""
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
        return (sign * 0.3 * v / 10,)
    if name in ("TranslateX", "TranslateY"):
        px = sign * (3 * v * (w if name == "TranslateX" else h) // 100)
        if px == 0:
            return None  # less than a pixel on a small image
        return (float(px),)
    raise ValueError(f"unknown RandAugment op {name!r}")


def colour_op(name: str, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A non-geometric op on a batch, ``value`` holding each image's parameter."""
    from kornia import enhance

    if name == "AutoContrast":  # each channel stretched to [0, 1]; a flat channel stays as it is
        lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
        return torch.where(hi > lo, enhance.normalize_min_max(x), x)
    if name == "Equalize":  # torchvision's batched equalize follows PIL's lookup table; kornia's rounds otherwise
        from torchvision.transforms.v2.functional import equalize

        return equalize(x)
    if name == "Brightness":
        return enhance.adjust_brightness_accumulative(x, value)
    if name == "Color":
        return enhance.adjust_saturation_with_gray_subtraction(x, value)
    if name == "Contrast":
        return enhance.adjust_contrast_with_mean_subtraction(x, value)
    if name == "Sharpness":
        return enhance.sharpness(x, value)
    if name == "Posterize":  # PIL's x & mask on 8-bit levels (kornia's posterize truncates x * 255 instead of rounding)
        keep = (255 << (8 - value.long())).remainder(256).to(torch.uint8).view(-1, 1, 1, 1)
        return ((x * 255).round().to(torch.uint8) & keep).to(x.dtype) / 255
    if name == "Solarize":
        return enhance.solarize(x, value)
    raise ValueError(f"unknown RandAugment op {name!r}")


def geometric_warp(x: torch.Tensor, names: Sequence[str], value: torch.Tensor) -> torch.Tensor:
    """Rotate / shear / translate each image of ``x`` by its own op ``names[i]`` and ``value[i]``,
    in one nearest-neighbour warp about the image centre (zeros outside).

    Each image's pixel map is p' = A (p - c) + c + t (A: rotation or shear, t: translation, c:
    the centre). The grid samples its inverse, S A^-1 S^-1 (u - S t) in the [-1, 1] coordinates
    u = S (p - c) of ``affine_grid(align_corners=True)``: kornia's ``warp_affine`` samples the
    same, but its per-call checks and the masked writes of a general matrix cost more than the
    warp itself on small images."""
    b, _, h, w = x.shape
    kind = torch.tensor([GEOMETRIC_INDEX[n] for n in names])
    v = value.to(torch.float64)
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    rot = kind == 0
    rad = torch.deg2rad(torch.where(rot, v, zero))  # counter-clockwise on screen, as torchvision's rotate
    cos, sin = torch.cos(rad), torch.sin(rad)
    m00 = m11 = torch.where(rot, cos, one)  # read only below: one tensor serves both
    m01 = torch.where(rot, sin, torch.where(kind == 1, -v, zero))   # shear x: (x + s y, y) comes to (x, y)
    m10 = torch.where(rot, -sin, torch.where(kind == 2, -v, zero))
    tx, ty = torch.where(kind == 3, v, zero), torch.where(kind == 4, v, zero)  # content moves by +px
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det  # A^-1
    sx, sy = 2 / max(w - 1, 1), 2 / max(h - 1, 1)
    theta = torch.stack([
        torch.stack([i00, i01 * sx / sy, -(i00 * tx + i01 * ty) * sx], 1),
        torch.stack([i10 * sy / sx, i11, -(i10 * tx + i11 * ty) * sy], 1),
    ], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], h, w], align_corners=True)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)


class RandAugment:
    """Batched FixMatch-style RandAugment: ``n_ops`` ops per image, each applied with prob ``p``."""

    def __init__(self, ops: Sequence[str], n_ops: int = 5, max_magnitude: int = 9, p: float = 0.5,
                 channels: int = 3):
        self.ops = [op for op in ops if channels == 3 or op not in RGB_ONLY]
        self.n_ops = n_ops if self.ops else 0
        self.max_magnitude = max_magnitude
        self.p = p
        self._tables: dict[tuple[int, int], torch.Tensor] = {}
        self._is_geometric = torch.tensor([name in GEOMETRIC for name in self.ops], dtype=torch.bool)
        self._colour_ops = [i for i, name in enumerate(self.ops) if name not in GEOMETRIC]

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """The random draws for a batch (B x n_ops each), from torch's global RNG."""
        shape = (batch, self.n_ops)
        op = torch.randint(len(self.ops), shape) if self.ops else torch.zeros(shape, dtype=torch.long)
        mag = torch.randint(1, self.max_magnitude + 1, shape)
        sign = torch.randint(0, 2, shape)  # 0: negative, 1: positive (geometric ops only)
        apply = torch.rand(shape) < self.p
        return {"op": op, "mag": mag, "sign": sign, "apply": apply}

    def table(self, h: int, w: int) -> torch.Tensor:
        """``op_args`` as a tensor: [op, v, sign] -> the op's parameter (NaN = no-op, 0 = none needed)."""
        if (h, w) not in self._tables:
            t = torch.full((len(self.ops), self.max_magnitude + 1, 2), float("nan"), dtype=torch.float64)
            for i, name in enumerate(self.ops):
                for v in range(1, self.max_magnitude + 1):
                    for s in (0, 1):
                        args = op_args(name, v, 1 if (s or name not in GEOMETRIC) else -1, h, w)
                        if args is not None:
                            t[i, v, s] = args[0] if args else 0.0
            self._tables[(h, w)] = t
        return self._tables[(h, w)]

    def __call__(self, x: torch.Tensor, draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.n_ops == 0 or x.shape[0] == 0:
            return x
        d = draws if draws is not None else self.sample(x.shape[0])
        value = self.table(x.shape[-2], x.shape[-1])[d["op"], d["mag"], d["sign"]]
        active = d["apply"] & ~value.isnan()          # host tensors: no device sync
        geometric = self._is_geometric[d["op"]]
        x = x.clone()
        n = len(self.ops)
        for slot in range(self.n_ops):
            op, val, on = d["op"][:, slot], value[:, slot], active[:, slot]
            rows = (on & geometric[:, slot]).nonzero().flatten()
            if rows.numel():
                idx = rows.to(x.device)
                x[idx] = geometric_warp(x[idx], [self.ops[i] for i in op[rows].tolist()], val[rows])
            # the rows of each colour op at once: one sort of the slot's op codes (code n: none)
            code = torch.where(on & ~geometric[:, slot], op, n)
            rows_of = torch.split(torch.argsort(code, stable=True), torch.bincount(code, minlength=n + 1).tolist())
            for i in self._colour_ops:
                rows = rows_of[i]
                if rows.numel():
                    idx = rows.to(x.device)
                    x[idx] = colour_op(self.ops[i], x[idx], val[rows].to(x.device, x.dtype)).clamp_(0, 1)
        return x
