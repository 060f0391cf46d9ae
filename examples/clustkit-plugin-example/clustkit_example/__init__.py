"""Example clustkit plugin: registers one loss component, ``align_uniform``.

Keep this module light (pydantic only): clustkit imports it to list plugins and validate
recipes; the torch code lives in ``clustkit_example.loss`` and is imported only when a run
builds the component.
"""

from __future__ import annotations

from pydantic import Field

from clustkit import HeadRef, LossConfig, Registry, View, hookimpl


class AlignUniformConfig(LossConfig):
    """Recipe keys of ``[losses.<id>] name = "align_uniform"``; unknown keys are rejected."""

    head: HeadRef = Field("instance", description="an L2-normalised head (the recipe must define it)")
    view_a: View = Field("weak1", description="a training view of the recipe's [views]")
    view_b: View = Field("weak2", description="another training view")
    alpha: float = Field(2.0, gt=0, description="exponent of the alignment distance")
    t: float = Field(2.0, gt=0, description="uniformity temperature")
    uniformity_weight: float = Field(1.0, ge=0)


@hookimpl
def register_components(registry: Registry) -> None:
    registry.add("loss", "align_uniform", "clustkit_example.loss:AlignUniform", AlignUniformConfig,
                 doc="alignment + uniformity on the hypersphere (Wang & Isola 2020)")
