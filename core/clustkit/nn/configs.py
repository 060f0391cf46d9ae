"""Recipe models of the core's neural components that several plugins register (no torch here).

One definition each: CC and IcicleGCN register the same instance head, CC and DigPro the same
per-image pipeline views, each under its own name and with its own defaults (``with_defaults``).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from clustkit.plugin_system.registry import ComponentConfig


class ProjectionHeadConfig(ComponentConfig):
    """An MLP head ``Linear(d → hidden) → [BN] → ReLU → Linear(hidden → out_dim)`` on the backbone."""

    hidden: int = Field(512, ge=1, description="hidden width")
    out_dim: int = Field(128, ge=2, description="output size")


class ClusterHeadConfig(ComponentConfig):
    """CC's cluster head ``Linear(d → hidden) → ReLU → Linear(hidden → K) → softmax``."""

    hidden: int = Field(512, ge=1, description="hidden width")


class NamedViewsConfig(ComponentConfig):
    """A view generator making one training view per entry of ``names`` (the core's generators)."""

    names: list[str] = Field(default_factory=lambda: ["weak1", "weak2"], min_length=1,
                             description="one training view per name")

    def view_names(self) -> tuple[str, ...]:
        """The views the generator will make, so that ``clustkit check`` tests view pairs (docs/api.md)."""
        return tuple(self.names)


class PipelineViewsConfig(NamedViewsConfig):
    """SimCLR-style views with per-image random parameters: random resized crop, flip, colour jitter, grey,
    optional blur."""

    size: int | None = Field(None, ge=4, description="crop size; default: the dataset's image size")
    strength: float = Field(0.5, ge=0, description="colour-jitter s, jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8: "
                            "0.5 CIFAR/Tiny-ImageNet (= (0.4, 0.4, 0.4, 0.1)), 1.0 ImageNet-10/Dogs/STL-10")
    blur: bool = Field(False, description="Gaussian blur p=0.5 (CC uses it for ImageNet-10/Dogs)")
    crop_scale: tuple[float, float] = (0.08, 1.0)
    normalize: bool = Field(False, description="ImageNet mean/std (CC passes none; DigPro normalises)")


class AffineParams(BaseModel):
    """Parameters of the batched ``TensorAffine`` augmentation (shared with plugins that embed it)."""

    model_config = ConfigDict(extra="forbid")

    degrees: float = Field(15.0, ge=0)
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = Field(0.1, ge=0, le=0.5)
    shear: float = Field(10.0, ge=0)
    erase_p: float = Field(0.5, ge=0, le=1)
    erase_area: tuple[float, float] = (0.05, 0.2)
    noise_std: float = Field(0.05, ge=0)


class TensorAffineConfig(NamedViewsConfig, AffineParams):
    """Views made by one batched affine + erasing + noise call each (tiny images, any device)."""


# --- [backbone] weights and train (clustkit.nn.weights applies them) ---------------------------------

FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def parse_train(text: str) -> int | None:
    """``"all"`` -> None (everything trains), ``"none"`` -> 0, ``"last:N"`` -> N."""
    if text == "all":
        return None
    if text == "none":
        return 0
    m = re.fullmatch(r"last:(\d+)", text)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"{text!r} is not a valid choice: \"all\", \"none\" or \"last:N\" with N ≥ 1")
    return int(m.group(1))
